"""Upstream keys' rpm/tpm and usage in Redis (`server.state_url`), shared by every
instance: the `UpstreamStore` of truckllm.limits.upstream over a Redis server.

`acquire` of a key with an rpm or tpm is one Lua script that checks and counts on the
Redis server (truckllm.limits.redis_scripts) and may refuse: another instance may have
used the key's last request of the minute since the router asked. The router's
synchronous question (`refusal`) is answered from what the last refusal said. A key
without rpm/tpm makes no round trip: its usage and spend are added in Redis in a batch,
once a second. The records health reads are this process's (the in-memory store this one
extends), and what matters of them to the others — a key cooling down after a 429, a key
upstream rejected, an opened breaker — is shared once a second (`sync_health`), so every
instance skips it within a second. While Redis is unreachable, the key's windows are kept
in memory, per instance. Must not import the pipeline or the server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from truckllm.clock import Clock
from truckllm.limits.accounts import Counters
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.meter import WINDOW_S, Refusal
from truckllm.limits.redis_link import FAILURES, PREFIX, StateLink, text
from truckllm.limits.redis_scripts import HEALTH_SYNC, UPSTREAM_ACQUIRE, UPSTREAM_SETTLE
from truckllm.limits.upstream import Hold, MemoryUpstreamStore
from truckllm.usage import Usage

if TYPE_CHECKING:
    from truckllm.limits.policy import RateLimits


_UNTIL_RELOAD_MS = 10 * 365 * 86_400_000     # a disabled key: until a reload clears it


class RedisHold:
    """One request's reservation in an upstream key's Redis windows."""

    __slots__ = ("estimate", "gid")

    def __init__(self, gid: str, estimate: int | None) -> None:
        self.gid = gid
        self.estimate = estimate    # tokens reserved in the tpm window, if it has one


class RedisUpstreamStore(MemoryUpstreamStore):
    """Shared rpm/tpm and usage of upstream keys; health records of this process."""

    __slots__ = ("_acquire", "_health", "_ids", "_pending", "_published", "_refused", "_settle",
                 "_span_ms", "_unpublish", "link")

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
        self._health = link.script(HEALTH_SYNC)
        self._published: dict[str, float] = {}  # field -> the local time it was shared until
        self._unpublish: set[str] = set()
        link.on_up.append(self.push)
        link.every_second.append(self.push)
        link.every_second.append(self.sync_health)

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

    async def sync_health(self) -> None:
        """Share this process's cooldowns, disabled keys and opened breakers, and take
        the other instances': one round trip a second. A later or longer one wins."""
        now = self.clock.monotonic()
        changes: list[Any] = []
        for field, until in self._health_now(now):
            if self._published.get(field) != until:
                self._published[field] = until
                ms = _UNTIL_RELOAD_MS if math.isinf(until) else int((until - now) * 1000)
                changes += [field, max(ms, 0)]
        for field in self._unpublish:
            changes += [field, -1]
        self._unpublish.clear()
        answer = await self.link.call(self._health, [f"{PREFIX}health"],
                                      [len(changes) // 2, *changes])
        now = self.clock.monotonic()
        for i in range(0, len(answer), 2):
            field, until = text(answer[i]), now + int(answer[i + 1]) / 1000
            kind, _, name = field.partition("|")
            if kind == "cool":
                record = self.key(name)
                if until > record.cooldown_until:
                    record.cooldown_until = until
            elif kind == "off":
                self.key(name).disabled = True
            elif kind in ("open-k", "open-t"):
                if kind == "open-k":
                    breaker = self.key(name).breaker
                else:
                    provider, _, model = name.partition("\x1f")
                    breaker = self.target((provider, model)).breaker
                if breaker.open_until is None or until > breaker.open_until:
                    breaker.open_until = until
                    breaker.openings = max(breaker.openings, 1)
                    breaker.trial_taken = False
                    breaker.failures.clear()
            else:
                continue
            self._published[field] = self._field_until(kind, name, now)

    def _health_now(self, now: float) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for ref, record in self._keys.items():
            if record.cooldown_until > now:
                found.append((f"cool|{ref}", record.cooldown_until))
            if record.disabled:
                found.append((f"off|{ref}", math.inf))
            if record.breaker.open_until is not None and record.breaker.open_until > now:
                found.append((f"open-k|{ref}", record.breaker.open_until))
        for (provider, model), target in self._targets.items():
            if target.breaker.open_until is not None and target.breaker.open_until > now:
                found.append((f"open-t|{provider}\x1f{model}", target.breaker.open_until))
        return found

    def _field_until(self, kind: str, name: str, now: float) -> float:
        """What the local record says now for a field (so taking it is not shared back)."""
        if kind == "cool":
            return self.key(name).cooldown_until
        if kind == "off":
            return math.inf
        if kind == "open-k":
            return self.key(name).breaker.open_until or now
        provider, _, model = name.partition("\x1f")
        return self.target((provider, model)).breaker.open_until or now

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
        # A reload re-enables keys upstream rejected (health's prune): so does the shared flag.
        for ref in refs:
            self._unpublish.add(f"off|{ref}")
            self._published.pop(f"off|{ref}", None)
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




