"""Rate windows and an in-flight count for one subject: a client key, the gateway, or an
upstream key. Pure; `now` is monotonic seconds given by the caller.

A window is only kept for a limit that is set, so unlimited subjects cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from truckllm.limits.headers import LimitState
from truckllm.limits.window import SlidingWindow, WindowEntry

if TYPE_CHECKING:       # the policy names upstream keys by truckllm.limits.upstream's ids
    from truckllm.limits.estimate import PromptEstimate
    from truckllm.limits.policy import RateLimits
    from truckllm.usage import Usage

WINDOW_S = 60.0
CONCURRENCY_RETRY_S = 1.0     # a slot frees when some request ends, which we cannot predict


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str                  # rpm | tpm | max_concurrent
    configured: int
    retry_after_s: float | None  # None: waiting cannot help (the request alone is too big)


class RateMeter:
    __slots__ = ("in_flight", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = SlidingWindow(WINDOW_S)
        self.tokens = SlidingWindow(WINDOW_S)
        self.in_flight = 0

    def refusal(self, rates: RateLimits, estimate: PromptEstimate, now: float) -> Refusal | None:
        """Why one more request of `estimate` tokens would break a limit; None if it fits."""
        if rates.max_concurrent is not None and self.in_flight >= rates.max_concurrent:
            wait = CONCURRENCY_RETRY_S if rates.max_concurrent else None   # 0: waiting cannot help
            return Refusal("max_concurrent", rates.max_concurrent, wait)
        if rates.rpm is not None and not self.requests.fits(1, rates.rpm, now):
            return Refusal("rpm", rates.rpm, _finite(self.requests.wait_s(1, rates.rpm, now)))
        if rates.tpm is not None and not self.tokens.fits(estimate.tokens, rates.tpm, now):
            wait = self.tokens.wait_s(estimate.tokens, rates.tpm, now)
            return Refusal("tpm", rates.tpm, _finite(wait))
        return None

    def reserve(self, rates: RateLimits, estimate: PromptEstimate, now: float) -> WindowEntry | None:
        """Count one admitted request in the windows of the limits that are set (the
        caller has checked `refusal` first); the token entry, if any, is what to reconcile
        with the real usage. Concurrency slots are the caller's: `in_flight`."""
        if rates.rpm is not None:
            self.requests.add(1, now)
        return self.tokens.add(estimate.tokens, now) if rates.tpm is not None else None

    def requests_state(self, rates: RateLimits, now: float) -> LimitState | None:
        if rates.rpm is None:
            return None
        used = self.requests.used(now)
        return LimitState(rates.rpm, max(0, rates.rpm - used), self.requests.reset_in(now))

    def tokens_state(self, rates: RateLimits, now: float) -> LimitState | None:
        if rates.tpm is None:
            return None
        used = self.tokens.used(now)
        return LimitState(rates.tpm, max(0, rates.tpm - used), self.tokens.reset_in(now))

    def clear_windows(self) -> None:
        self.requests.clear()
        self.tokens.clear()


# The token entries a request holds in tpm windows until its real usage replaces them;
# () when no tpm applies.
Held = tuple[tuple[SlidingWindow, WindowEntry], ...]


def reserve(meter: RateMeter, rates: RateLimits, estimate: PromptEstimate, now: float) -> Held:
    """Count one request in the windows of `rates` that are set (the caller knows some is)."""
    entry = meter.reserve(rates, estimate, now)
    return () if entry is None else ((meter.tokens, entry),)


def reconcile(held: Held, usage: Usage, now: float) -> None:
    """Replace what `held` reserved with the real total of `usage`."""
    for window, entry in held:
        window.reconcile(entry, usage.total_tokens, now)


def _finite(seconds: float) -> float | None:
    return None if math.isinf(seconds) else seconds
