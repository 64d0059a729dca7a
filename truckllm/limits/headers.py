"""The `x-ratelimit-*` response headers and the duration format OpenAI uses in them.

Pure formatting; the numbers come from truckllm.limits.limiter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit as a client sees it after its request: the limit, what is left, and
    how long until the window is back to the full limit."""

    limit: int
    remaining: int
    reset_s: float


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI writes `x-ratelimit-reset-*`: `12ms`, `1s`, `1.5s`, `6m0s`.

    This is Go's time.Duration format, rounded up to the millisecond so a client that
    waits exactly this long is never early.
    """
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    text = _seconds_text(millis) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _seconds_text(millis: int) -> str:
    whole, fraction = divmod(millis, 1000)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:03d}".rstrip("0")


def format_ratelimit_headers(requests: LimitState | None,
                             tokens: LimitState | None) -> dict[str, str]:
    """The OpenAI header trios for the limits that exist; {} when neither does."""
    headers: dict[str, str] = {}
    for kind, state in (("requests", requests), ("tokens", tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_reset(state.reset_s)
    return headers
