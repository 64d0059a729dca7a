"""Runtime health of upstream keys and targets: cooldowns, disabled keys, breakers,
in-flight counts and time-to-first-token estimates — the rules. Their transitions are
operations of the upstream store (truckllm.limits.upstream), whose records survive config
reloads and answer the router's questions; traffic counters, in-flight counts and
time-to-first-token are this process's and kept in those records directly.

No I/O; time comes from the injectable clock. Imports truckllm.pipeline.retry (for outcome
classes) and the upstream store; must not import config, state, router or dispatch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from truckllm.clock import Clock, SystemClock
from truckllm.limits.upstream import (
    Breaker,
    HealthSettings,
    KeyRecord,
    MemoryUpstreamStore,
    TargetId,
    TargetRecord,
    UpstreamStore,
    upstream_ref,
)
from truckllm.pipeline.retry import HEALTH_FAILURES, ErrorClass, Outcome, failure_reason

__all__ = ["Attempt", "Health", "HealthSettings", "KeyHealth", "Status", "TargetId"]

# Failures where the upstream still answered properly: they prove it healthy.
ANSWERED = frozenset({ErrorClass.CLIENT_ERROR, ErrorClass.CONTEXT_OVERFLOW})
# Wildcard aliases let clients name any upstream model, so target entries are bounded:
# past this many, entries with nothing to remember (idle, closed, no failures) are dropped.
MAX_TARGETS = 10_000
# Time-to-first-token estimates: weight of a new sample, and the half-life after which an
# old estimate counts half as much (so a once-slow target is tried again eventually).
TTFT_ALPHA = 0.3
TTFT_HALF_LIFE_S = 120.0


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


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
    """The health rules over the upstream store. One instance per process, held by the app."""

    def __init__(self, settings: HealthSettings | None = None, *, clock: Clock | None = None,
                 store: UpstreamStore | None = None) -> None:
        self.settings = settings or HealthSettings()
        self.clock: Clock = clock or SystemClock()
        self.store: UpstreamStore = (store if store is not None
                                     else MemoryUpstreamStore(self.clock))
        self._monotonic = self.clock.monotonic

    # -- reloads ---------------------------------------------------------------------

    def configure(self, settings: HealthSettings) -> None:
        self.settings = settings

    def prune(self, key_refs: Collection[str], provider_ids: Collection[str]) -> None:
        """After a reload: forget keys and providers that are gone, and give keys that
        upstream rejected another chance (the reload may have fixed their value)."""
        self.store.retain(key_refs, provider_ids)
        self.store.enable_keys(key_refs)

    # -- questions the router asks --------------------------------------------------

    def key_available(self, key_ref: str | None) -> bool:
        return self.available(None, key_ref)

    def target_available(self, target: TargetId) -> bool:
        return self.available(target, None)

    def available(self, target: TargetId | None, key_ref: str | None) -> bool:
        """Whether an attempt on `target` with `key_ref` may start now (None: not asked).
        The target and the key are judged at the same instant."""
        store = self.store
        state = None if target is None else store.find_target(target)
        key = None if key_ref is None else store.find_key(key_ref)
        if key is not None and key.disabled:
            return False
        # Only an opened breaker or a cooled key depend on time: without one (the common
        # case) the answer is known without reading the clock.
        if ((state is None or state.breaker.open_until is None)
                and (key is None or (key.breaker.open_until is None and not key.cooldown_until))):
            return True
        now = self._monotonic()
        if state is not None and not state.breaker.allows(now):
            return False
        return key is None or (now >= key.cooldown_until and key.breaker.allows(now))

    def in_flight(self, target: TargetId) -> int:
        state = self.store.find_target(target)
        return state.in_flight if state else 0

    def latency_estimate(self, target: TargetId) -> float | None:
        """Recent time to first token, decayed towards zero as it ages so that a target
        judged slow long ago gets measured again; None before any measurement."""
        state = self.store.find_target(target)
        return None if state is None else _decayed_ttft(state, self._monotonic())

    def seconds_until_available(self, target: TargetId, key_ref: str | None) -> float | None:
        """0 when usable now; None when it will not recover before a reload."""
        now = self._monotonic()
        ready_at = max(self._target_ready_at(target, now), self._key_ready_at(key_ref, now))
        return None if math.isinf(ready_at) else max(0.0, ready_at - now)

    def last_failure(self, pairs: Iterable[tuple[TargetId, str | None]]) -> str | None:
        """The most recent failure recorded for these (target, key) pairs, as its message
        (never a secret: outcomes are masked before health sees them); None if none."""
        store = self.store
        stamped: list[tuple[float, str]] = []
        for target, key_ref in pairs:
            for state in (store.find_target(target),
                          store.find_key(key_ref) if key_ref is not None else None):
                if state is not None and state.last_failure is not None:
                    stamped.append(state.last_failure)
        return max(stamped)[1] if stamped else None

    def _key_ready_at(self, key_ref: str | None, now: float) -> float:
        state = self.store.find_key(key_ref) if key_ref is not None else None
        if state is None:
            return now
        if state.disabled:
            return math.inf
        return max(now, state.cooldown_until, self._breaker_ready_at(state.breaker, now))

    def _target_ready_at(self, target: TargetId, now: float) -> float:
        state = self.store.find_target(target)
        return now if state is None else self._breaker_ready_at(state.breaker, now)

    @staticmethod
    def _breaker_ready_at(breaker: Breaker, now: float) -> float:
        if breaker.open_until is None:
            return now
        if breaker.trial_taken and now >= breaker.open_until:
            return now + 1.0            # a trial is running; its answer comes soon
        return breaker.open_until

    # -- what dispatch reports -------------------------------------------------------

    def begin(self, target: TargetId, key_ref: str | None) -> Attempt:
        """An attempt starts: count it in flight and claim half-open trials it stands for."""
        store = self.store
        target_state = store.find_target(target)
        if target_state is None:
            if store.target_count() >= MAX_TARGETS:
                self._forget_idle_targets(self._monotonic())
            target_state = store.target(target)
        target_state.in_flight += 1
        key_state = None
        if key_ref is not None:
            key_state = store.key(key_ref)
            key_state.requests += 1
        attempt = Attempt(self, target, target_state, key_ref, key_state)
        # Only a breaker that has opened has a trial to claim: the common case asks nothing,
        # not even the clock.
        if target_state.breaker.open_until is not None or (
                key_state is not None and key_state.breaker.open_until is not None):
            attempt.claim_trials(self._monotonic())
        return attempt

    def _forget_idle_targets(self, now: float) -> None:
        self.store.forget_targets([tid for tid, state in self.store.targets()
                                   if state.in_flight or state.breaker.open_until is not None
                                   or state.breaker.recent_failures(now, self.settings)])

    def _succeeded(self, target_id: TargetId, target: TargetRecord, key_ref: str | None,
                   key: KeyRecord | None, ttft_s: float | None) -> None:
        # Every answer passes here: a closed, clean breaker (the common case) is left alone,
        # so a success is no store operation (no round trip for a shared store).
        breaker = target.breaker
        if breaker.open_until is not None or breaker.failures:
            self.store.breaker_closed(target_id)
        if ttft_s is not None:
            now = self._monotonic()
            previous = _decayed_ttft(target, now)
            target.ttft_s = ttft_s if previous is None else previous + TTFT_ALPHA * (ttft_s - previous)
            target.ttft_at = now
        if key_ref is not None and key is not None:
            breaker = key.breaker
            if breaker.open_until is not None or breaker.failures:
                self.store.breaker_closed(key_ref)
            key.rate_limit_streak = 0

    def _failed(self, target_id: TargetId, target: TargetRecord, key_ref: str | None,
                key: KeyRecord | None, outcome: Outcome) -> None:
        if key is not None:             # every failed attempt is counted against its key
            key.errors += 1
            key.last_error = failure_reason(outcome)
        if outcome.error_class in ANSWERED:
            # The upstream answered properly; the request itself was at fault.
            self._succeeded(target_id, target, key_ref, key, None)
            return
        now = self._monotonic()
        if outcome.error_class in HEALTH_FAILURES:
            self.store.breaker_failed(target_id, now, self.settings)
            target.last_failure = (now, outcome.message)
        if key_ref is not None and key is not None:
            self._key_failed(key_ref, key, outcome, now)

    def _key_failed(self, key_ref: str, key: KeyRecord, outcome: Outcome, now: float) -> None:
        key.last_failure = (now, outcome.message)
        if outcome.error_class is ErrorClass.RATE_LIMITED:
            self._cool_key(key_ref, key, outcome.retry_after_s, now)
        elif outcome.error_class is ErrorClass.AUTH:
            self.store.disable_key(key_ref)
        elif outcome.error_class in HEALTH_FAILURES:
            self.store.breaker_failed(key_ref, now, self.settings)

    def record_probe(self, key_ref: str, outcome: Outcome | None) -> None:
        """An active health check of one key: None when it answered 2xx. A free probe
        proves the key and the provider reachable, not a model: targets are untouched.
        Probes are not traffic: the key's counters are not changed."""
        key = self.store.key(key_ref)
        if outcome is None:
            if key.breaker.open_until is not None or key.breaker.failures:
                self.store.breaker_closed(key_ref)
        elif outcome.error_class not in ANSWERED:
            self._key_failed(key_ref, key, outcome, self._monotonic())

    def _cool_key(self, key_ref: str, key: KeyRecord, retry_after_s: float | None,
                  now: float) -> None:
        key.rate_limit_streak += 1
        if retry_after_s is not None:
            cooldown = retry_after_s            # upstream knows best when it is ready
        else:
            cooldown = min(self.settings.cooldown_s * 2 ** (key.rate_limit_streak - 1),
                           self.settings.max_cooldown_s)
        self.store.cool_key(key_ref, now + cooldown)

    # -- views -----------------------------------------------------------------------

    def key_health(self, key_ref: str) -> KeyHealth:
        state = self.store.find_key(key_ref)
        if state is None:
            return KeyHealth(Status.HEALTHY, False, None, 0, 0, 0, None)
        now = self._monotonic()
        ready_at = self._key_ready_at(key_ref, now)
        until = None if ready_at <= now or math.isinf(ready_at) else self._to_wall(ready_at, now)
        return KeyHealth(self._key_status(state, now), state.disabled, until,
                         state.requests, state.errors, state.tokens, state.last_error)

    def target_status(self, target: TargetId) -> Status:
        state = self.store.find_target(target)
        if state is None:
            return Status.HEALTHY
        return self._breaker_status(state.breaker, self._monotonic())

    def provider_status(self, provider_id: str, key_refs: Collection[str]) -> Status:
        """Down when every key (or every target seen) is down; degraded when anything is
        not healthy; healthy otherwise."""
        key_statuses = [self.key_health(ref).status for ref in key_refs]
        target_statuses = [self.target_status(tid) for tid, _ in self.store.targets()
                           if tid[0] == provider_id]
        if key_statuses and all(s is Status.DOWN for s in key_statuses):
            return Status.DOWN
        if target_statuses and all(s is Status.DOWN for s in target_statuses):
            return Status.DOWN
        if any(s is not Status.HEALTHY for s in (*key_statuses, *target_statuses)):
            return Status.DEGRADED
        return Status.HEALTHY

    def provider_report(self, provider_id: str, provider_type: str,
                        key_ids: Sequence[str]) -> dict[str, Any]:
        """One entry of `GET /admin/v1/providers`: status, and per key its status, traffic,
        `cooldown_until` (ISO 8601 UTC, null when usable now), usage and spend since the
        key first appeared (`lifetime`, from the state file)."""
        refs = [upstream_ref(provider_id, key_id) for key_id in key_ids]
        keys = []
        for key_id, ref in zip(key_ids, refs, strict=True):
            view = self.key_health(ref)
            record = self.store.find_key(ref)
            usage = record.usage if record is not None else None
            keys.append({"id": key_id, "usage_req": view.requests, "usage_tokens": view.tokens,
                         "errors": view.errors, "last_error": view.last_error,
                         "spend_usd": usage.spend_usd if usage else 0.0,
                         "lifetime": {"requests": usage.requests if usage else 0,
                                      "tokens": usage.tokens if usage else 0,
                                      "spend_usd": usage.spend_usd if usage else 0.0},
                         "status": view.status.value, "cooldown_until": _iso(view.cooldown_until)})
        return {"id": provider_id, "type": provider_type,
                "status": self.provider_status(provider_id, refs).value, "keys": keys}

    def _key_status(self, state: KeyRecord, now: float) -> Status:
        if state.disabled or now < state.cooldown_until:
            return Status.DOWN
        if state.rate_limit_streak:
            return Status.DEGRADED
        return self._breaker_status(state.breaker, now)

    def _breaker_status(self, breaker: Breaker, now: float) -> Status:
        if breaker.is_open(now):
            return Status.DOWN
        if breaker.is_half_open(now) or breaker.recent_failures(now, self.settings):
            return Status.DEGRADED
        return Status.HEALTHY

    def _to_wall(self, monotonic_at: float, now: float) -> float:
        return self.clock.wall() + (monotonic_at - now)


class Attempt:
    """One upstream attempt in progress. If it took a half-open breaker's trial
    (`on_trial`), `confirm_trials()` before sending it. Report its first byte
    (`succeeded`) and any failure (`failed`, also after the first byte: a stalled stream
    counts), then always `end()` it, also when the client went away; or `withdraw()` it
    if it is not sent after all."""

    __slots__ = ("_claimed_key", "_claimed_target", "_ended", "_failed", "_health", "_key",
                 "_key_ref", "_succeeded", "_target", "_target_id", "on_trial")

    def __init__(self, health: Health, target_id: TargetId, target: TargetRecord,
                 key_ref: str | None, key: KeyRecord | None) -> None:
        self._health = health
        self._target_id = target_id
        self._target = target
        self._key_ref = key_ref
        self._key = key
        self._claimed_target = self._claimed_key = self.on_trial = False
        self._succeeded = self._failed = self._ended = False

    def claim_trials(self, now: float) -> None:
        """Take the trials of half-open breakers this attempt stands for (at its start)."""
        store = self._health.store
        self._claimed_target = store.claim_trial(self._target_id, now)
        self._claimed_key = self._key_ref is not None and store.claim_trial(self._key_ref, now)
        self.on_trial = self._claimed_target or self._claimed_key

    async def confirm_trials(self) -> bool:
        """Whether the trials this attempt took are its to run (a shared store asks its
        server: another instance may hold one). If not, the attempt is withdrawn."""
        store = self._health.store
        confirmed = True
        try:
            if self._claimed_target:
                self._claimed_target = await store.confirm_trial(self._target_id)
                confirmed = self._claimed_target
            if confirmed and self._claimed_key and self._key_ref is not None:
                self._claimed_key = await store.confirm_trial(self._key_ref)
                confirmed = self._claimed_key
        except BaseException:
            self.withdraw()             # cancelled (the client left): the trials go back
            raise
        if not confirmed:
            self.withdraw()
        return confirmed

    def withdraw(self) -> None:
        """The attempt is not sent after all: it counts nowhere, its trials are given back."""
        if self._ended:
            return
        self._ended = True
        self._target.in_flight -= 1
        if self._key is not None:
            self._key.requests -= 1
        self._release_trials()

    def succeeded(self, ttft_s: float | None = None) -> None:
        if not (self._succeeded or self._failed):
            self._succeeded = True
            self._health._succeeded(self._target_id, self._target, self._key_ref, self._key,
                                    ttft_s)

    def failed(self, outcome: Outcome) -> None:
        if self._failed:
            return
        self._failed = True
        self._health._failed(self._target_id, self._target, self._key_ref, self._key, outcome)
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
        store = self._health.store
        if self._claimed_target:
            store.release_trial(self._target_id)
        if self._claimed_key and self._key_ref is not None:
            store.release_trial(self._key_ref)
        self._claimed_target = self._claimed_key = False


def _decayed_ttft(state: TargetRecord, now: float) -> float | None:
    if state.ttft_s is None:
        return None
    age = now - state.ttft_at
    decay: float = 0.5 ** (age / TTFT_HALF_LIFE_S) if age > 0.0 else 1.0
    return state.ttft_s * decay


_LAST_SHOWABLE_UNIX = 253_402_300_799.0      # 9999-12-31T23:59:59Z


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    # A huge cooldown_s in the config must not make the admin API fail.
    return datetime.fromtimestamp(min(unix, _LAST_SHOWABLE_UNIX), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

