"""Upstream keys' rpm/tpm and usage in Redis (`server.state_url`), shared by every
instance: the `UpstreamStore` of truckllm.limits.upstream over a Redis server.

`acquire` of a key with an rpm or tpm is one Lua script that checks and counts on the
Redis server (truckllm.limits.redis_scripts) and may refuse: another instance may have
used the key's last request of the minute since the router asked. The router's
synchronous question (`refusal`) is answered from what the last refusal said. A key
without rpm/tpm makes no round trip: its usage and spend are added in Redis in a batch,
once a second.

Health: cooldowns, disabled keys and breakers (their failures, openings and half-open
trial) are kept in Redis, and each transition is one script, atomic on Redis's clock. The
records the router reads are this process's copy (the in-memory store this one extends):
a transition is applied to it at once and posted, and its answer (the state on Redis
after it) replaces the copy's; a trial is confirmed on Redis before the attempt is sent.
What other instances did reaches the copy by those answers and by a read once a second
(`refresh_health`). Successes of a closed breaker without failures never leave the
process. While Redis is unreachable, windows and health are kept in memory, per instance.
Must not import the pipeline or the server.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from truckllm.clock import Clock
from truckllm.limits.accounts import Counters
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.meter import WINDOW_S, Refusal
from truckllm.limits.redis_link import FAILURES, PREFIX, StateLink, text
from truckllm.limits.redis_scripts import (
    HEALTH_CLAIM,
    HEALTH_CLOSE,
    HEALTH_COOL,
    HEALTH_FAIL,
    HEALTH_FLAG,
    HEALTH_READ,
    HEALTH_RELEASE,
    UPSTREAM_ACQUIRE,
    UPSTREAM_SETTLE,
)
from truckllm.limits.upstream import (
    Breaker,
    HealthSettings,
    Hold,
    MemoryUpstreamStore,
    Subject,
    TargetId,
)
from truckllm.usage import Usage

if TYPE_CHECKING:
    from truckllm.limits.policy import RateLimits


# A half-open trial whose instance died (or never reported) is given to another after this.
TRIAL_LEASE_S = 60.0
_HEALTH = f"{PREFIX}upstream-health"


class RedisHold:
    """One request's reservation in an upstream key's Redis windows."""

    __slots__ = ("estimate", "gid")

    def __init__(self, gid: str, estimate: int | None) -> None:
        self.gid = gid
        self.estimate = estimate    # tokens reserved in the tpm window, if it has one


class RedisUpstreamStore(MemoryUpstreamStore):
    """Shared rpm/tpm and usage of upstream keys; health records of this process."""

    __slots__ = ("_acquire", "_claim", "_close", "_cool", "_fail", "_flag", "_ids", "_pending",
                 "_read", "_refused", "_release", "_settle", "_span_ms", "_trials", "_unanswered",
                 "link")

    def __init__(self, link: StateLink, clock: Clock | None = None, *,
                 window_s: float = WINDOW_S) -> None:
        super().__init__(clock)
        self.link = link
        self._span_ms = int(window_s * 1000)
        self._ids = itertools.count()
        self._refused: dict[str, tuple[float, Refusal]] = {}   # until (monotonic), why
        self._pending: dict[str, Counters] = {}                 # usage Redis has not seen
        self._acquire = link.script(UPSTREAM_ACQUIRE)
        self._settle = link.script(UPSTREAM_SETTLE)
        self._fail, self._close = link.script(HEALTH_FAIL), link.script(HEALTH_CLOSE)
        self._claim, self._release = link.script(HEALTH_CLAIM), link.script(HEALTH_RELEASE)
        self._cool, self._flag = link.script(HEALTH_COOL), link.script(HEALTH_FLAG)
        self._read = link.script(HEALTH_READ)
        # Health fields with transitions posted and not answered yet: an answer (or the
        # refresh) is taken into the local copy only when it is the last one, so an older
        # answer never undoes a newer transition.
        self._unanswered: dict[str, int] = {}
        self._trials: dict[str, str] = {}       # field -> owner of the trial this process holds
        link.on_up.append(self.push)
        link.every_second.append(self.push)
        link.every_second.append(self.refresh_health)

    def refusal(self, ref: str, rates: RateLimits, estimate: PromptEstimate) -> Refusal | None:
        if not self.link.up:
            return super().refusal(ref, rates, estimate)
        refused = self._refused.get(ref)
        if refused is None:
            return None
        until, why = refused
        now = self.clock.monotonic()
        if now >= until:
            del self._refused[ref]
            return None
        wait = None if why.retry_after_s is None else until - now
        return Refusal(why.limit, why.configured, wait)

    async def acquire(self, ref: str, rates: RateLimits,
                      estimate: PromptEstimate) -> Hold | Refusal:
        if not rates.windowed or not self.link.up:
            self._owed(ref).requests += 1
            return await super().acquire(ref, rates, estimate)
        self.key(ref).usage.requests += 1
        gid = f"{self.link.instance}:{next(self._ids)}"
        tokens = estimate.tokens if rates.tpm is not None else 0
        k = _names(ref)
        try:
            answer = await self.link.call(
                self._acquire, [f"{k}:rpm", f"{k}:tpm", f"{k}:tpm:sum", f"{k}:acct"],
                [gid, tokens, self._span_ms, _opt(rates.rpm), _opt(rates.tpm)])
        except FAILURES:
            self.key(ref).usage.requests -= 1
            self._owed(ref).requests += 1
            return await super().acquire(ref, rates, estimate)
        if int(answer[0]) == 1:
            self.key(ref).usage.requests -= 1
            wait_ms = int(answer[3])
            why = Refusal(text(answer[1]), int(answer[2]), None if wait_ms < 0 else wait_ms / 1000)
            until = self.clock.monotonic() + (float("inf") if wait_ms < 0 else wait_ms / 1000)
            self._refused[ref] = (until, why)
            return why
        self._refused.pop(ref, None)
        self.changes += 1
        return (RedisHold(gid, tokens if rates.tpm is not None else None),)

    def count(self, ref: str) -> None:
        # No window in Redis to count in: owed to the shared account, as acquire does.
        self._owed(ref).requests += 1
        super().count(ref)

    def add_usage(self, ref: str, usage: Usage | None, cost_usd: float) -> None:
        # Nothing held in Redis: owed to the shared account, as `settle` does for such a use.
        super().add_usage(ref, usage, cost_usd)
        self._owed(ref).add_usage(usage, cost_usd)

    async def settle(self, ref: str, held: Hold, usage: Usage | None, cost_usd: float) -> None:
        hold = held[0] if held else None
        if not isinstance(hold, RedisHold):     # no windows, or counted during an outage
            await super().settle(ref, held, usage, cost_usd)
            self._owed(ref).add_usage(usage, cost_usd)
            return
        counters = self.key(ref).usage
        counters.add_usage(usage, cost_usd)
        self.changes += 1
        if not self.link.up:
            self._owed(ref).add_usage(usage, cost_usd)
            return
        prompt = completion = 0
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        k = _names(ref)

        def done(_: Any, exc: BaseException | None) -> None:
            if exc is not None:
                self._owed(ref).add_usage(usage, cost_usd)

        # Not waited for, like the end of a client key's request (truckllm.limits.redis_clients).
        self.link.post(self._settle, [f"{k}:tpm", f"{k}:tpm:sum", f"{k}:acct"], [
            hold.gid, self._span_ms, _opt(hold.estimate),
            _opt(None if usage is None else usage.total_tokens), prompt, completion,
            repr(float(cost_usd))], done)

    # -- health ---------------------------------------------------------------------

    def breaker_failed(self, subject: Subject, now: float, settings: HealthSettings) -> None:
        super().breaker_failed(subject, now, settings)
        if self.link.up:
            field = _field(subject)
            self._trials.pop(field, None)
            self._post(self._fail, field, [
                _ms(settings.cooldown_s), settings.breaker_failures, _ms(settings.breaker_window_s),
                _ms(settings.max_cooldown_s)], self._breaker_follows(subject))

    def breaker_closed(self, subject: Subject) -> None:
        super().breaker_closed(subject)
        if self.link.up:
            field = _field(subject)
            self._trials.pop(field, None)
            self._post(self._close, field, [], self._breaker_follows(subject))

    async def confirm_trial(self, subject: Subject) -> bool:
        """The claim `claim_trial` made locally, checked and taken on Redis."""
        if not self.link.up:
            return True                 # local health, as without Redis
        field = _field(subject)
        owner = f"{self.link.instance}:{next(self._ids)}"
        self._unanswered[field] = self._unanswered.get(field, 0) + 1
        try:
            answer = await self.link.call(self._claim, [_HEALTH],
                                          [field, _ms(TRIAL_LEASE_S), owner])
        except FAILURES:
            return True                 # the link is down now: the local claim stands
        finally:
            last = self._answered(field)
        taken = int(answer[1])
        if taken == 1:
            self._trials[field] = owner
        if last:        # otherwise the local claim stays until the newer answer
            self._set_breaker(self.breaker(subject), answer[0], answer[2])
        return taken >= 0

    def release_trial(self, subject: Subject) -> None:
        super().release_trial(subject)
        field = _field(subject)
        owner = self._trials.pop(field, None)
        if owner is not None and self.link.up:
            self._post(self._release, field, [owner], self._breaker_follows(subject))

    def cool_key(self, ref: str, until: float) -> None:
        super().cool_key(ref, until)
        if self.link.up:
            record = self.key(ref)

            def took(answer: Any) -> None:
                shared = self._local(answer[0], answer[1])
                if shared > record.cooldown_until:
                    record.cooldown_until = shared

            wait_ms = max(0, _ms(until - self.clock.monotonic()))
            self._post(self._cool, f"c|{ref}", [wait_ms], took)

    def disable_key(self, ref: str) -> None:
        super().disable_key(ref)
        if self.link.up:
            self.link.post(self._flag, [_HEALTH], ["1", f"d|{ref}"], _ignored)

    def enable_keys(self, refs: Collection[str]) -> None:
        super().enable_keys(refs)
        if refs and self.link.up:
            self.link.post(self._flag, [_HEALTH], ["0", *(f"d|{ref}" for ref in refs)], _ignored)

    async def refresh_health(self) -> None:
        """Take what the other instances did (cooldowns, disabled keys, breakers opened,
        closed or with their trial taken) into the local copy: one read a second."""
        answer = await self.link.call(self._read, [_HEALTH], [])
        seen: set[str] = set()
        for i in range(1, len(answer), 2):
            field, value = text(answer[i]), text(answer[i + 1])
            seen.add(field)
            if field in self._unanswered:
                continue
            kind, _, name = field.partition("|")
            if kind == "c":
                record = self.key(name)
                record.cooldown_until = max(record.cooldown_until, self._local(answer[0], value))
            elif kind == "d":
                self.key(name).disabled = True
            elif kind in ("k", "t"):
                self._set_breaker(self.breaker(_subject(kind, name)), answer[0], value)
        # A breaker missing from Redis is closed there (another instance's trial succeeded).
        closed: list[Breaker] = [
            record.breaker for ref, record in self._keys.items()
            if f"k|{ref}" not in seen and f"k|{ref}" not in self._unanswered]
        closed += [record.breaker for tid, record in self._targets.items()
                   if _field(tid) not in seen and _field(tid) not in self._unanswered]
        for breaker in closed:
            if breaker.open_until is not None or breaker.failures:
                breaker.on_success()

    def _post(self, script: Any, field: str, args: list[Any],
              took: Callable[[Any], None]) -> None:
        """Post one transition on `field`; `took` gets the answer if no newer one is
        posted meanwhile. Not waited for: the local copy already has the transition."""
        self._unanswered[field] = self._unanswered.get(field, 0) + 1

        def done(answer: Any, exc: BaseException | None) -> None:
            if self._answered(field) and exc is None:
                took(answer)

        self.link.post(script, [_HEALTH], [field, *args], done)

    def _answered(self, field: str) -> bool:
        """One call on `field` answered; whether it was the last one posted."""
        left = self._unanswered.get(field, 1) - 1
        if left > 0:
            self._unanswered[field] = left
            return False
        self._unanswered.pop(field, None)
        return True

    def _breaker_follows(self, subject: Subject) -> Callable[[Any], None]:
        def took(answer: Any) -> None:
            self._set_breaker(self.breaker(subject), answer[0], answer[-1])
        return took

    def _set_breaker(self, breaker: Breaker, redis_now: Any, packed: Any) -> None:
        """The local copy of a breaker becomes what Redis holds (a packed state, see
        truckllm.limits.redis_scripts; '' = closed without failures)."""
        state = text(packed)
        if not state:
            breaker.on_success()
            return
        until, openings, trial, _, _, failures = state.split("|")
        breaker.open_until = None if not until else self._local(redis_now, until)
        breaker.openings = int(openings)
        breaker.trial_taken = int(trial) > int(redis_now)
        breaker.failures = deque(self._local(redis_now, at) for at in failures.split(",") if at)

    def _local(self, redis_now: Any, redis_ms: Any) -> float:
        """A time on Redis's clock (ms) as the same moment on this process's monotonic clock."""
        return self.clock.monotonic() + (int(redis_ms) - int(redis_now)) / 1000

    def _owed(self, ref: str) -> Counters:
        owed = self._pending.get(ref)
        if owed is None:
            owed = self._pending[ref] = Counters()
        return owed

    async def push(self) -> None:
        """Add the usage this process counted and Redis has not been told yet."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        pipe = self.link.client.pipeline(transaction=False)
        for ref, owed in pending.items():
            acct = f"{_names(ref)}:acct"
            pipe.hincrby(acct, "r", owed.requests)
            pipe.hincrby(acct, "pt", owed.prompt_tokens)
            pipe.hincrby(acct, "ct", owed.completion_tokens)
            pipe.hincrbyfloat(acct, "sp", owed.spend_usd)
        try:
            await pipe.execute()
        except FAILURES:
            for ref, owed in pending.items():     # told nothing (or not known): keep it
                self._owed(ref).add(owed)
            raise

    async def shared_usage(self, ref: str) -> Counters:
        """The key's usage and spend counted by every instance."""
        await self.link.flushed()       # the settles of this process's requests first
        raw: dict[Any, Any] = await self.link.client.hgetall(f"{_names(ref)}:acct")
        owed = self._pending.get(ref, Counters())

        def number(name: str) -> int:
            return int(float(raw.get(name.encode(), b"0")))
        return Counters(number("r") + owed.requests, number("pt") + owed.prompt_tokens,
                        number("ct") + owed.completion_tokens,
                        float(raw.get(b"sp", b"0")) + owed.spend_usd)

    def retain(self, refs: Collection[str], provider_ids: Collection[str] | None = None) -> None:
        super().retain(refs, provider_ids)
        for ref in [ref for ref in self._pending if ref not in refs]:
            del self._pending[ref]
        for ref in [ref for ref in self._refused if ref not in refs]:
            del self._refused[ref]

    def usage_snapshot(self) -> dict[str, Any]:
        """Redis keeps usage and spend: nothing is saved in a state file."""
        return {}

    def restore_usage(self, usage: dict[str, Counters]) -> None:
        """Usage from a state file is added to Redis by `push` (imported once)."""
        for ref, counters in usage.items():
            self._owed(ref).add(counters)
        self.changes += 1


def _names(ref: str) -> str:
    return f"{PREFIX}u:{ref}"


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _field(subject: Subject) -> str:
    """The health hash's field of a breaker (see truckllm.limits.redis_scripts)."""
    if isinstance(subject, str):
        return f"k|{subject}"
    provider, model = subject
    return f"t|{provider}\x1f{model}"


def _subject(kind: str, name: str) -> Subject:
    if kind == "k":
        return name
    provider, _, model = name.partition("\x1f")
    target: TargetId = (provider, model)
    return target


def _ignored(answer: Any, exc: BaseException | None) -> None:
    """A flag set or cleared: the local copy already has it; a failure is an outage."""




