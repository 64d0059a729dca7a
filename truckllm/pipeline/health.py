"""Runtime health of upstream keys and targets: cooldowns, disabled keys, breakers,
in-flight counts and time-to-first-token estimates. It survives config reloads, keyed by
stable ids ("provider/key" for keys, (provider, model) for targets), never by snapshot.

No I/O; time comes from an injectable clock. Imports only truckllm.pipeline.retry (for outcome
classes); must not import config, state, router or dispatch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from truckllm.pipeline.retry import HEALTH_FAILURES, ErrorClass, Outcome

Clock = Callable[[], float]
TargetId = tuple[str, str]              # (provider id, upstream model)

# Failures where the upstream still answered properly: they prove it healthy.
ANSWERED = frozenset({ErrorClass.CLIENT_ERROR, ErrorClass.CONTEXT_OVERFLOW})
# Longest a key or target is skipped, however often it kept failing.
MAX_COOLDOWN_FACTOR = 10
# Wildcard aliases let clients name any upstream model, so target entries are bounded:
# past this many, entries with nothing to remember (idle, closed, no failures) are dropped.
MAX_TARGETS = 10_000
# Time-to-first-token estimates: weight of a new sample, and the half-life after which an
# old estimate counts half as much (so a once-slow target is tried again eventually).
TTFT_ALPHA = 0.3
TTFT_HALF_LIFE_S = 120.0


def key_ref(provider_id: str, key_id: str) -> str:
    """The stable id health, limits and logs use for an upstream key."""
    return f"{provider_id}/{key_id}"


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The routing settings health depends on; replaced on reload."""

    cooldown_s: float = 30.0            # a 429 without Retry-After, or an opened breaker
    breaker_failures: int = 3           # consecutive failures that open a breaker ...
    breaker_window_s: float = 60.0      # ... when they fall within this window

    @property
    def max_cooldown_s(self) -> float:
        return self.cooldown_s * MAX_COOLDOWN_FACTOR


@dataclass(slots=True)
class _Breaker:
    """Closed -> (N failures in the window) open -> (after cooldown) half-open: one trial
    request; its success closes the breaker, its failure opens it again for longer."""

    failures: deque[float] = field(default_factory=deque)
    open_until: float | None = None
    openings: int = 0                   # consecutive, so each reopening lasts longer
    trial_taken: bool = False

    def is_open(self, now: float) -> bool:
        return self.open_until is not None and now < self.open_until

    def is_half_open(self, now: float) -> bool:
        return self.open_until is not None and now >= self.open_until

    def allows(self, now: float) -> bool:
        if self.open_until is None:
            return True
        return now >= self.open_until and not self.trial_taken

    def claim_trial(self, now: float) -> bool:
        """Take the one trial of a half-open breaker, if it is half-open and untaken."""
        if self.open_until is None or self.trial_taken or now < self.open_until:
            return False
        self.trial_taken = True
        return True

    def on_success(self) -> None:
        # Idempotent: a closed breaker with no failures (open_until None implies no trial
        # and no openings) is left as it is, so callers on the hot path skip the call then.
        self.failures.clear()
        self.open_until = None
        self.openings = 0
        self.trial_taken = False

    def on_failure(self, now: float, settings: HealthSettings) -> None:
        if self.is_half_open(now):
            self._open(now, settings)
            return
        while self.failures and now - self.failures[0] > settings.breaker_window_s:
            self.failures.popleft()
        self.failures.append(now)
        if len(self.failures) >= settings.breaker_failures:
            self._open(now, settings)

    def _open(self, now: float, settings: HealthSettings) -> None:
        self.openings += 1
        cooldown = settings.cooldown_s * 2 ** (self.openings - 1)
        self.open_until = now + min(cooldown, settings.max_cooldown_s)
        self.failures.clear()
        self.trial_taken = False

    def recent_failures(self, now: float, settings: HealthSettings) -> int:
        return sum(1 for at in self.failures if now - at <= settings.breaker_window_s)


@dataclass(slots=True)
class _KeyState:
    breaker: _Breaker = field(default_factory=_Breaker)
    cooldown_until: float = 0.0         # set by 429s
    rate_limit_streak: int = 0
    disabled: bool = False              # 401/403 from upstream, until the next reload
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(slots=True)
class _TargetState:
    breaker: _Breaker = field(default_factory=_Breaker)
    in_flight: int = 0
    ttft_s: float | None = None
    ttft_at: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True)
class KeyHealth:
    """What the admin API and metrics show about one upstream key."""

    status: Status
    disabled: bool
    cooldown_until: float | None        # unix seconds, None when usable now
    requests: int
    errors: int
    tokens: int
    last_error: str | None


class Health:
    """Per-key and per-target runtime state. One instance per process, held by the app."""

    def __init__(self, settings: HealthSettings | None = None, *,
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self.settings = settings or HealthSettings()
        self._clock = clock
        self._wall_clock = wall_clock
        self._keys: dict[str, _KeyState] = {}
        self._targets: dict[TargetId, _TargetState] = {}

    # -- reloads ---------------------------------------------------------------------

    def configure(self, settings: HealthSettings) -> None:
        self.settings = settings

    def prune(self, key_refs: Collection[str], provider_ids: Collection[str]) -> None:
        """After a reload: forget keys and providers that are gone, and give keys that
        upstream rejected another chance (the reload may have fixed their value)."""
        self._keys = {ref: state for ref, state in self._keys.items() if ref in key_refs}
        for state in self._keys.values():
            state.disabled = False
        self._targets = {tid: state for tid, state in self._targets.items()
                         if tid[0] in provider_ids}

    # -- questions the router asks --------------------------------------------------

    def key_available(self, key_ref: str | None) -> bool:
        return self.available(None, key_ref)

    def target_available(self, target: TargetId) -> bool:
        return self.available(target, None)

    def available(self, target: TargetId | None, key_ref: str | None) -> bool:
        """Whether an attempt on `target` with `key_ref` may start now (None: not asked).
        Read at one instant; asked per attempt, so it is one call."""
        state = None if target is None else self._targets.get(target)
        key = None if key_ref is None else self._keys.get(key_ref)
        if key is not None and key.disabled:
            return False
        # Only an opened breaker or a cooled key depend on time: without one (the common
        # case), the clock is not read.
        if ((state is None or state.breaker.open_until is None)
                and (key is None or (key.breaker.open_until is None and not key.cooldown_until))):
            return True
        now = self._clock()
        if state is not None and not state.breaker.allows(now):
            return False
        return key is None or (now >= key.cooldown_until and key.breaker.allows(now))

    def in_flight(self, target: TargetId) -> int:
        state = self._targets.get(target)
        return state.in_flight if state else 0

    def latency_estimate(self, target: TargetId) -> float | None:
        """Recent time to first token, decayed towards zero as it ages so that a target
        judged slow long ago gets measured again; None before any measurement."""
        state = self._targets.get(target)
        return None if state is None else _decayed_ttft(state, self._clock())

    def seconds_until_available(self, target: TargetId, key_ref: str | None) -> float | None:
        """0 when usable now; None when it will not recover before a reload."""
        now = self._clock()
        ready_at = max(self._target_ready_at(target, now), self._key_ready_at(key_ref, now))
        return None if math.isinf(ready_at) else max(0.0, ready_at - now)

    def earliest_recovery_s(self, pairs: Iterable[tuple[TargetId, str | None]]) -> float | None:
        """Seconds until the first of these (target, key) pairs is usable; None if never."""
        waits = [w for t, k in pairs if (w := self.seconds_until_available(t, k)) is not None]
        return min(waits) if waits else None

    def last_failure(self, pairs: Iterable[tuple[TargetId, str | None]]) -> str | None:
        """The most recent failure recorded for these (target, key) pairs, as its message
        (never a secret: outcomes are masked before health sees them); None if none."""
        stamped = [(state.last_error_at, state.last_error)
                   for target, key_ref in pairs
                   for state in (self._targets.get(target),
                                 self._keys.get(key_ref) if key_ref is not None else None)
                   if state is not None and state.last_error_at is not None]
        return max(stamped)[1] if stamped else None

    def _key_ready_at(self, key_ref: str | None, now: float) -> float:
        state = self._keys.get(key_ref) if key_ref is not None else None
        if state is None:
            return now
        if state.disabled:
            return math.inf
        return max(now, state.cooldown_until, self._breaker_ready_at(state.breaker, now))

    def _target_ready_at(self, target: TargetId, now: float) -> float:
        state = self._targets.get(target)
        return now if state is None else self._breaker_ready_at(state.breaker, now)

    @staticmethod
    def _breaker_ready_at(breaker: _Breaker, now: float) -> float:
        if breaker.open_until is None:
            return now
        if breaker.trial_taken and now >= breaker.open_until:
            return now + 1.0            # a trial is running; its answer comes soon
        return breaker.open_until

    # -- what dispatch reports -------------------------------------------------------

    def begin(self, target: TargetId, key_ref: str | None) -> Attempt:
        """An attempt starts: count it in flight and claim half-open trials it stands for."""
        target_state = self._targets.get(target)
        if target_state is None:
            if len(self._targets) >= MAX_TARGETS:
                self._forget_idle_targets(self._clock())
            target_state = self._targets[target] = _TargetState()
        target_state.in_flight += 1
        key_state = None
        if key_ref is not None:
            key_state = self._keys.get(key_ref)
            if key_state is None:
                key_state = self._keys[key_ref] = _KeyState()
            key_state.requests += 1
        attempt = Attempt(self, target_state, key_state)
        # Only a breaker that has opened has a trial to claim: the common case asks nothing,
        # not even the clock.
        if target_state.breaker.open_until is not None or (
                key_state is not None and key_state.breaker.open_until is not None):
            attempt.claim_trials(self._clock())
        return attempt

    def _forget_idle_targets(self, now: float) -> None:
        self._targets = {tid: state for tid, state in self._targets.items()
                         if state.in_flight or state.breaker.open_until is not None
                         or state.breaker.recent_failures(now, self.settings)}

    def _succeeded(self, target: _TargetState, key: _KeyState | None, ttft_s: float | None) -> None:
        # Every answer passes here: a closed, clean breaker (the common case) is not called.
        breaker = target.breaker
        if breaker.open_until is not None or breaker.failures:
            breaker.on_success()
        if ttft_s is not None:
            now = self._clock()
            previous = _decayed_ttft(target, now)
            target.ttft_s = ttft_s if previous is None else previous + TTFT_ALPHA * (ttft_s - previous)
            target.ttft_at = now
        if key is not None:
            breaker = key.breaker
            if breaker.open_until is not None or breaker.failures:
                breaker.on_success()
            key.rate_limit_streak = 0

    def _failed(self, target: _TargetState, key: _KeyState | None, outcome: Outcome) -> None:
        now = self._clock()
        if outcome.error_class in ANSWERED:
            # The upstream answered properly; the request itself was at fault.
            self._succeeded(target, key, None)
            return
        if outcome.error_class in HEALTH_FAILURES:
            target.breaker.on_failure(now, self.settings)
            target.last_error, target.last_error_at = outcome.message, now
        if key is not None:
            self._key_failed(key, outcome, now)

    def _key_failed(self, key: _KeyState, outcome: Outcome, now: float) -> None:
        key.errors += 1
        key.last_error, key.last_error_at = outcome.message, now
        if outcome.error_class is ErrorClass.RATE_LIMITED:
            self._cool_key(key, outcome.retry_after_s, now)
        elif outcome.error_class is ErrorClass.AUTH:
            key.disabled = True
        elif outcome.error_class in HEALTH_FAILURES:
            key.breaker.on_failure(now, self.settings)

    def record_probe(self, key_ref: str, outcome: Outcome | None) -> None:
        """An active health check of one key: None when it answered 2xx. A free probe
        proves the key and the provider reachable, not a model: targets are untouched."""
        key = self._keys.setdefault(key_ref, _KeyState())
        if outcome is None:
            key.breaker.on_success()
        elif outcome.error_class not in ANSWERED:
            self._key_failed(key, outcome, self._clock())

    def _cool_key(self, key: _KeyState, retry_after_s: float | None, now: float) -> None:
        key.rate_limit_streak += 1
        if retry_after_s is not None:
            cooldown = retry_after_s            # upstream knows best when it is ready
        else:
            cooldown = min(self.settings.cooldown_s * 2 ** (key.rate_limit_streak - 1),
                           self.settings.max_cooldown_s)
        key.cooldown_until = max(key.cooldown_until, now + cooldown)

    # -- views -----------------------------------------------------------------------

    def key_health(self, key_ref: str) -> KeyHealth:
        state = self._keys.get(key_ref)
        if state is None:
            return KeyHealth(Status.HEALTHY, False, None, 0, 0, 0, None)
        now = self._clock()
        ready_at = self._key_ready_at(key_ref, now)
        until = None if ready_at <= now or math.isinf(ready_at) else self._to_wall(ready_at, now)
        return KeyHealth(self._key_status(state, now), state.disabled, until,
                         state.requests, state.errors, state.tokens, state.last_error)

    def target_status(self, target: TargetId) -> Status:
        state = self._targets.get(target)
        if state is None:
            return Status.HEALTHY
        return self._breaker_status(state.breaker, self._clock())

    def provider_status(self, provider_id: str, key_refs: Collection[str]) -> Status:
        """Down when every key (or every target seen) is down; degraded when anything is
        not healthy; healthy otherwise."""
        key_statuses = [self.key_health(ref).status for ref in key_refs]
        target_statuses = [self.target_status(tid) for tid in self._targets if tid[0] == provider_id]
        if key_statuses and all(s is Status.DOWN for s in key_statuses):
            return Status.DOWN
        if target_statuses and all(s is Status.DOWN for s in target_statuses):
            return Status.DOWN
        if any(s is not Status.HEALTHY for s in (*key_statuses, *target_statuses)):
            return Status.DEGRADED
        return Status.HEALTHY

    def provider_last_error(self, provider_id: str, key_refs: Collection[str]) -> str | None:
        stamped = [(s.last_error_at, s.last_error) for ref in key_refs
                   if (s := self._keys.get(ref)) is not None and s.last_error_at is not None]
        stamped += [(s.last_error_at, s.last_error) for tid, s in self._targets.items()
                    if tid[0] == provider_id and s.last_error_at is not None]
        return max(stamped, key=lambda pair: pair[0] or 0.0)[1] if stamped else None

    def provider_report(self, provider_id: str, provider_type: str,
                        key_ids: Sequence[str]) -> dict[str, Any]:
        """One entry of `GET /admin/v1/providers`: status, last error, and per key its
        status, counters and `cooldown_until` (ISO 8601 UTC, null when usable now)."""
        refs = [key_ref(provider_id, key_id) for key_id in key_ids]
        keys = []
        for key_id, ref in zip(key_ids, refs, strict=True):
            view = self.key_health(ref)
            keys.append({"id": key_id, "status": view.status.value, "usage_req": view.requests,
                         "usage_tokens": view.tokens, "errors": view.errors,
                         "cooldown_until": _iso(view.cooldown_until), "disabled": view.disabled,
                         "last_error": view.last_error})
        return {"id": provider_id, "type": provider_type,
                "status": self.provider_status(provider_id, refs).value,
                "last_error": self.provider_last_error(provider_id, refs), "keys": keys}

    def _key_status(self, state: _KeyState, now: float) -> Status:
        if state.disabled or now < state.cooldown_until:
            return Status.DOWN
        if state.rate_limit_streak:
            return Status.DEGRADED
        return self._breaker_status(state.breaker, now)

    def _breaker_status(self, breaker: _Breaker, now: float) -> Status:
        if breaker.is_open(now):
            return Status.DOWN
        if breaker.is_half_open(now) or breaker.recent_failures(now, self.settings):
            return Status.DEGRADED
        return Status.HEALTHY

    def _to_wall(self, monotonic_at: float, now: float) -> float:
        return self._wall_clock() + (monotonic_at - now)


class Attempt:
    """One upstream attempt in progress. Report its first byte (`succeeded`) and any
    failure (`failed`, also after the first byte: a stalled stream counts), then always
    `end()` it, also when the client went away."""

    __slots__ = ("_claimed_key", "_claimed_target", "_ended", "_failed", "_health", "_key",
                 "_succeeded", "_target")

    def __init__(self, health: Health, target: _TargetState, key: _KeyState | None) -> None:
        self._health = health
        self._target = target
        self._key = key
        self._claimed_target = self._claimed_key = False
        self._succeeded = self._failed = self._ended = False

    def claim_trials(self, now: float) -> None:
        """Take the trials of half-open breakers this attempt stands for (at its start)."""
        self._claimed_target = self._target.breaker.claim_trial(now)
        self._claimed_key = self._key is not None and self._key.breaker.claim_trial(now)

    def succeeded(self, ttft_s: float | None = None) -> None:
        if not (self._succeeded or self._failed):
            self._succeeded = True
            self._health._succeeded(self._target, self._key, ttft_s)

    def failed(self, outcome: Outcome) -> None:
        if self._failed:
            return
        self._failed = True
        self._health._failed(self._target, self._key, outcome)
        if outcome.error_class not in HEALTH_FAILURES:
            self._release_trials()      # a 429 or 401 says nothing about the breaker

    def end(self, tokens: int = 0) -> None:
        """The attempt is over (answer sent, stream ended, or cancelled)."""
        if self._ended:
            return
        self._ended = True
        self._target.in_flight -= 1
        if self._key is not None:
            self._key.tokens += tokens
        if not (self._succeeded or self._failed):
            self._release_trials()      # cancelled before an answer: let another try

    def _release_trials(self) -> None:
        if self._claimed_target:
            self._target.breaker.trial_taken = False
        if self._claimed_key and self._key is not None:
            self._key.breaker.trial_taken = False
        self._claimed_target = self._claimed_key = False


def _decayed_ttft(state: _TargetState, now: float) -> float | None:
    if state.ttft_s is None:
        return None
    age = now - state.ttft_at
    decay: float = 0.5 ** (age / TTFT_HALF_LIFE_S) if age > 0.0 else 1.0    # (max() costs more)
    return state.ttft_s * decay


_LAST_SHOWABLE_UNIX = 253_402_300_799.0      # 9999-12-31T23:59:59Z


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    # A huge cooldown_s in the config must not make the admin API fail.
    return datetime.fromtimestamp(min(unix, _LAST_SHOWABLE_UNIX), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

