"""Client keys' and the gateway's runtime state in Redis (`server.state_url`): the
`ClientStore` shared by every instance and worker that names the same server.

Every check-and-count (`admit`) and every end of a request (`finish`) is one Lua script
(truckllm.limits.redis_scripts), atomic on the Redis server and on its clock. A request
waits for one round trip, its admission: its end is written to Redis before the
response goes out, and its answer not waited for (truckllm.limits.redis_link keeps this
process's calls in order, so the end lands before any admission made after it). A
request of a key with nothing to check (no rate, cap or budget, behind an unlimited
gateway) makes no round trip at all: its usage is added to the key's account in a batch,
once a second.

When Redis is unreachable (truckllm.limits.redis_link) requests are served from an
in-memory store that enforces the same limits in this process alone, seeded with the
spend last seen; the usage and spend counted meanwhile are pushed to Redis when it is
back. With `state_failure: closed`, requests of keys with limits or budgets are refused
(503) instead while it is down. Must not import the server, the pipeline or the limiter.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Collection
from datetime import datetime
from typing import Any

from truckllm.clock import Clock
from truckllm.errors import Overloaded
from truckllm.limits.accounts import Account, Counters
from truckllm.limits.clients import Grant, LimitScope, MemoryClientStore, Refused
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.headers import LimitState
from truckllm.limits.meter import WINDOW_S, Refusal
from truckllm.limits.policy import KeyPolicy, RateLimits
from truckllm.limits.redis_link import FAILURES, PREFIX, Keys, StateLink, text
from truckllm.limits.redis_scripts import ADMIT, CURRENT, FINISH, MERGE, RENEW, RESET
from truckllm.usage import Usage

LEASE_S = 30.0      # a slot outlives a dead instance by at most this (renewed every second)
_GATEWAY = f"{PREFIX}g"


class RedisGrant(Grant):
    """A grant counted in Redis: its id names its window entries and slot leases."""

    __slots__ = ("gid", "gw_est", "key_est")

    def __init__(self, key_id: str | None, gid: str, key_est: int | None,
                 gw_est: int | None) -> None:
        super().__init__(key_id, None, ())
        self.gid = gid
        self.key_est = key_est          # tokens reserved in the key's tpm window, if any
        self.gw_est = gw_est            # and in the gateway's


class _Seen:
    """A key's windows as the last round trip returned them (the x-ratelimit-* headers)."""

    __slots__ = ("at", "rpm_reset_s", "rpm_used", "tpm_reset_s", "tpm_used")

    def __init__(self, at: float, answer: list[Any]) -> None:
        self.at = at
        self.rpm_used, self.tpm_used = int(answer[1]), int(answer[3])
        self.rpm_reset_s, self.tpm_reset_s = int(answer[2]) / 1000, int(answer[4]) / 1000


class _Spend:
    """A key's period spend as last seen: as the last admission read it from Redis (a
    number in text, read only when needed: for a fallback), plus what this process's
    ends have added since."""

    __slots__ = ("added", "answer", "start")

    def __init__(self, start: datetime, answer: Any = b"0") -> None:
        self.start = start
        self.answer = answer
        self.added = 0.0

    def usd(self) -> float:
        return float(self.answer) + self.added


class _Limits:
    """ADMIT's fields that come from a key's policy and the gateway's limits, in text:
    the same for every request until the config changes."""

    __slots__ = ("fields", "gateway", "key", "uses_tokens")

    def __init__(self, key: KeyPolicy | None, gateway: RateLimits, span_ms: int,
                 lease_ms: int) -> None:
        self.key = key
        self.gateway = gateway
        rates = key.rates if key is not None and key.limited else None
        self.uses_tokens = gateway.tpm is not None or (rates is not None and
                                                       rates.tpm is not None)
        self.fields = _packed([
            span_ms, lease_ms, "1" if key is not None else "0",
            _opt(rates.rpm if rates else None), _opt(rates.tpm if rates else None),
            _opt(rates.max_concurrent if rates else None),
            _opt(key.budget_usd if key is not None else None),
            _opt(gateway.rpm), _opt(gateway.tpm), _opt(gateway.max_concurrent)])


class RedisClientStore:
    """The `ClientStore` of truckllm.limits.clients over a Redis server."""

    def __init__(self, link: StateLink, clock: Clock, *, window_s: float = WINDOW_S,
                 lease_s: float = LEASE_S) -> None:
        self.link = link
        self.clock = clock
        self.changes = 0
        self.local = MemoryClientStore(clock)   # the keys without checks, and the fallback
        self._span_ms = int(window_s * 1000)
        self._lease_ms = int(lease_s * 1000)
        self._ids = itertools.count()
        self._live: dict[str, RedisGrant] = {}  # in flight: their slot leases are renewed
        self._seen: dict[str, _Seen] = {}
        self._spend: dict[str, _Spend] = {}     # last period spend seen
        self._seeded: set[str] = set()          # keys whose fallback account is seeded
        self._pending: dict[str, Account] = {}  # usage not yet added in Redis
        self._keys: dict[str, tuple[Keys, Keys]] = {}   # ADMIT's and FINISH's, by key id
        self._limits: dict[str, _Limits] = {}   # ADMIT's fields of the policies, by key id
        self._admit = link.script(ADMIT)
        self._finish = link.script(FINISH)
        self._current = link.script(CURRENT)
        self._reset = link.script(RESET)
        self._merge = link.script(MERGE)
        self._renew = link.script(RENEW)
        link.on_up.append(self._back)
        link.every_second.append(self._periodic)

    # -- requests ---------------------------------------------------------------------

    async def admit(self, gateway: RateLimits, key: KeyPolicy | None, estimate: PromptEstimate,
                    period_start: datetime) -> Grant | Refused:
        checked = gateway.limited or (key is not None and key.limited)
        if not checked:
            return self.count(key, period_start)
        if not self.link.up:
            return await self._fall_back(gateway, key, estimate, period_start)
        gid = f"{self.link.instance}:{next(self._ids)}"
        keys, args = self._admit_call(gateway, key, estimate, period_start, gid)
        try:
            answer = await self.link.call(self._admit, keys, args)
        except FAILURES:
            return await self._fall_back(gateway, key, estimate, period_start)
        if key is not None:
            self._remember(key.key_id, answer, period_start)
        status = int(answer[0])
        if status == 1:
            return Refused(None, spend_usd=float(answer[5]))
        if status in (2, 3):
            wait = int(answer[8])
            refusal = Refusal(text(answer[6]), int(answer[7]), None if wait < 0 else wait / 1000)
            return Refused(LimitScope.KEY if status == 2 else LimitScope.GATEWAY, refusal)
        tokens = estimate.tokens if (gateway.tpm is not None or
                                     (key is not None and key.rates.tpm is not None)) else 0
        grant = RedisGrant(
            None if key is None else key.key_id, gid,
            tokens if key is not None and key.rates.tpm is not None else None,
            tokens if gateway.tpm is not None else None)
        self._live[gid] = grant
        self.changes += 1
        return grant

    def count(self, key: KeyPolicy | None, period_start: datetime) -> Grant:
        # Nothing to check: counted here, and the request owed to the shared account.
        grant = self.local.count(key, period_start)
        if key is not None:
            self._owed(key.key_id, period_start).requests += 1
            self.changes += 1
        return grant

    def finish_counted(self, grant: Grant, usage: Usage | None, cost_usd: float,
                       period_start: datetime) -> None:
        # The local store's grant, ended as `_end` ends one: its usage owed to Redis.
        self.local.finish_counted(grant, usage, cost_usd, period_start)
        if grant.key_id is not None:
            self._owed(grant.key_id, period_start).add_usage(usage, cost_usd)
        self.changes += 1

    def _keys_of(self, key_id: str) -> tuple[Keys, Keys]:
        """The keys of ADMIT and FINISH for a client key ('' for none)."""
        found = self._keys.get(key_id)
        if found is None:
            k, g = _names(key_id), _GATEWAY
            found = self._keys[key_id] = (
                Keys([f"{k}:rpm", f"{k}:tpm", f"{k}:tpm:sum", f"{k}:slots", f"{k}:acct",
                      f"{g}:rpm", f"{g}:tpm", f"{g}:tpm:sum", f"{g}:slots"]),
                Keys([f"{k}:rpm", f"{k}:tpm", f"{k}:tpm:sum", f"{k}:slots", f"{k}:acct",
                      f"{g}:tpm", f"{g}:tpm:sum", f"{g}:slots"]))
        return found

    def _admit_call(self, gateway: RateLimits, key: KeyPolicy | None, estimate: PromptEstimate,
                    period_start: datetime, gid: str) -> tuple[Keys, list[Any]]:
        key_id = key.key_id if key is not None else ""
        limits = self._limits.get(key_id)
        if limits is None or limits.key is not key or limits.gateway is not gateway:
            limits = self._limits[key_id] = _Limits(key, gateway, self._span_ms, self._lease_ms)
        tokens = estimate.tokens if limits.uses_tokens else 0
        return (self._keys_of(key_id)[0],
                [f"{gid}|{tokens}|{_iso(period_start)}|{limits.fields}"])

    async def _admit_locally(self, gateway: RateLimits, key: KeyPolicy | None,
                             estimate: PromptEstimate, period_start: datetime) -> Grant | Refused:
        granted = await self.local.admit(gateway, key, estimate, period_start)
        if isinstance(granted, Grant) and key is not None:
            self._owed(key.key_id, period_start).requests += 1
            self.changes += 1
        return granted

    async def _fall_back(self, gateway: RateLimits, key: KeyPolicy | None,
                         estimate: PromptEstimate, period_start: datetime) -> Grant | Refused:
        if self.link.fail_closed:
            raise Overloaded("The shared limit state is unreachable, and this gateway refuses "
                             "requests of keys with limits or budgets until it is back.",
                             retry_after_s=1.0)
        if key is not None and key.key_id not in self._seeded:
            self._seeded.add(key.key_id)
            seen = self._spend.get(key.key_id) or _Spend(period_start)
            self.local.restore({key.key_id: Account(seen.start,
                                                    Counters(spend_usd=seen.usd()))})
        return await self._admit_locally(gateway, key, estimate, period_start)

    async def settle(self, grant: Grant, usage: Usage | None, cost_usd: float,
                     period_start: datetime) -> None:
        await self._end(grant, usage, cost_usd, period_start, settle=True, release=False)

    async def release(self, grant: Grant) -> None:
        await self._end(grant, None, 0.0, None, settle=False, release=True)

    async def finish(self, grant: Grant, usage: Usage | None, cost_usd: float,
                     period_start: datetime) -> None:
        await self._end(grant, usage, cost_usd, period_start, settle=True, release=True)

    async def _end(self, grant: Grant, usage: Usage | None, cost_usd: float,
                   period_start: datetime | None, *, settle: bool, release: bool) -> None:
        if not isinstance(grant, RedisGrant):
            if settle:
                assert period_start is not None
                await self.local.settle(grant, usage, cost_usd, period_start)
                if grant.key_id is not None:
                    self._owed(grant.key_id, period_start).add_usage(usage, cost_usd)
            if release:
                await self.local.release(grant)
            self.changes += 1
            return
        if release:
            self._live.pop(grant.gid, None)
        if not self.link.up:
            self._owe(grant, usage, cost_usd, period_start, settle)
            return
        keys, args = self._finish_call(grant, usage, cost_usd, period_start, settle, release)
        key_id = grant.key_id

        def done(_: Any, exc: BaseException | None) -> None:
            if exc is not None:
                # The slots' leases run out by themselves; the usage is pushed when it is back.
                self._owe(grant, usage, cost_usd, period_start, settle)
                return
            if key_id is not None and settle and cost_usd and period_start is not None:
                seen = self._spend.get(key_id)
                if seen is None:
                    seen = self._spend[key_id] = _Spend(period_start)
                if seen.start == period_start:
                    seen.added += cost_usd

        # Its answer is not waited for (the client's answer does not wait for a second
        # round trip), only its writing: Redis then has it before any admission made after
        # the client got its answer, so a budget is crossed by the requests in flight only.
        self.link.post(self._finish, keys, args, done, now=True)
        self.changes += 1
        await self.link.written()

    def _finish_call(self, grant: RedisGrant, usage: Usage | None, cost_usd: float,
                     period_start: datetime | None, settle: bool,
                     release: bool) -> tuple[Keys, list[Any]]:
        prompt = completion = 0
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        args: list[Any] = [
            grant.gid, self._span_ms, "1" if settle else "0", "1" if release else "0",
            _opt(grant.key_est), _opt(grant.gw_est),
            _opt(None if usage is None else usage.total_tokens), prompt, completion,
            repr(float(cost_usd)), "" if period_start is None else _iso(period_start),
            "1" if grant.key_id is not None else "0"]
        return self._keys_of(grant.key_id or "")[1], [_packed(args)]

    def _owe(self, grant: RedisGrant, usage: Usage | None, cost_usd: float,
             period_start: datetime | None, settle: bool) -> None:
        if settle and grant.key_id is not None and period_start is not None:
            self._owed(grant.key_id, period_start).add_usage(usage, cost_usd)
            self.changes += 1

    def _owed(self, key_id: str, period_start: datetime) -> Counters:
        """The period counters of what this process counted for the key and Redis has
        not been told yet. Pending accounts keep the period in `period` and what belongs
        to earlier periods only in `lifetime` (both are added to the lifetime when pushed)."""
        owed = self._pending.get(key_id)
        if owed is None:
            owed = self._pending[key_id] = Account(period_start)
        elif owed.period_start != period_start:    # a new period: the old one is lifetime now
            owed.lifetime.add(owed.period)
            owed.period_start = period_start
            owed.period.clear()
        return owed.period

    def _remember(self, key_id: str, answer: list[Any], period_start: datetime) -> None:
        self._seen[key_id] = _Seen(self.clock.monotonic(), answer)
        self._spend[key_id] = _Spend(period_start, answer[5])

    # -- reads ------------------------------------------------------------------------

    def window_state(self, key_id: str, rates: RateLimits) -> tuple[LimitState | None,
                                                                    LimitState | None]:
        seen = self._seen.get(key_id)
        if not self.link.up or seen is None:
            return self.local.window_state(key_id, rates)
        gone = self.clock.monotonic() - seen.at
        rpm = tpm = None
        if rates.rpm is not None:
            rpm = LimitState(rates.rpm, max(0, rates.rpm - seen.rpm_used),
                             max(0.0, seen.rpm_reset_s - gone))
        if rates.tpm is not None:
            tpm = LimitState(rates.tpm, max(0, rates.tpm - seen.tpm_used),
                             max(0.0, seen.tpm_reset_s - gone))
        return rpm, tpm

    async def account(self, key_id: str, period_start: datetime) -> Account:
        account = Account(period_start)
        if self.link.up:
            try:
                await self.link.flushed()       # the ends of this process's requests first
                raw = await self.link.client.hgetall(f"{_names(key_id)}:acct")
            except FAILURES as exc:
                self.link.failed(exc)
            else:
                account = _account(raw, period_start)
        else:
            account = await self.local.account(key_id, period_start)
        owed = self._pending.get(key_id)
        if owed is not None and self.link.up:
            if owed.period_start == period_start:
                account.period.add(owed.period)
            account.lifetime.add(owed.period)
            account.lifetime.add(owed.lifetime)
        return account

    async def current(self, key_id: str) -> tuple[int, int, int]:
        requests, tokens, in_flight = await self.local.current(key_id)
        if self.link.up:
            k = _names(key_id)
            try:
                answer = await self.link.call(
                    self._current, [f"{k}:rpm", f"{k}:tpm", f"{k}:tpm:sum", f"{k}:slots"],
                    [self._span_ms])
            except FAILURES:
                return requests, tokens, in_flight
            requests, tokens = requests + int(answer[0]), tokens + int(answer[1])
            in_flight += int(answer[2])
        return requests, tokens, in_flight

    async def reset(self, key_id: str, period_start: datetime) -> None:
        await self.local.reset(key_id, period_start)
        self._pending.pop(key_id, None)
        self._seen.pop(key_id, None)
        self._spend[key_id] = _Spend(period_start)
        k = _names(key_id)
        with contextlib.suppress(*FAILURES):    # down: reset here only, Redis keeps its own
            await self.link.call(self._reset, [f"{k}:rpm", f"{k}:tpm", f"{k}:tpm:sum",
                                               f"{k}:acct"], [period_start.isoformat()])
        self.changes += 1

    def retain(self, key_ids: Collection[str]) -> None:
        self.local.retain(key_ids)
        for table in (self._seen, self._spend, self._pending, self._keys, self._limits):
            for gone in [key_id for key_id in table if key_id not in key_ids]:
                del table[gone]

    def snapshot(self) -> dict[str, Any]:
        """Redis keeps usage and spend: nothing is saved in a state file."""
        return {}

    def restore(self, accounts: dict[str, Account]) -> None:
        """Usage from a state file (imported once, see truckllm.limits.redis_import) is
        added to Redis by `push`: here it is only queued."""
        for key_id, account in accounts.items():
            self._owed(key_id, account.period_start).add(account.period)
            owed = self._pending[key_id]
            # lifetime beyond the period (earlier periods) rides along in the lifetime push
            extra = Counters(account.lifetime.requests - account.period.requests,
                             account.lifetime.prompt_tokens - account.period.prompt_tokens,
                             account.lifetime.completion_tokens - account.period.completion_tokens,
                             account.lifetime.spend_usd - account.period.spend_usd)
            owed.lifetime.add(extra)
        self.changes += 1

    # -- keeping Redis current --------------------------------------------------------

    async def push(self) -> None:
        """Add what this process counted and Redis has not been told yet."""
        # Each account is taken out of the queue before it is sent: usage counted while
        # the call is out starts a new one, and two pushes at once never send one twice.
        while self._pending:
            key_id = next(iter(self._pending))
            owed = self._pending.pop(key_id)
            p, extra = owed.period, owed.lifetime
            try:
                await self.link.call(self._merge, [f"{_names(key_id)}:acct"], [
                    owed.period_start.isoformat(), p.requests, p.prompt_tokens,
                    p.completion_tokens, repr(p.spend_usd), p.requests + extra.requests,
                    p.prompt_tokens + extra.prompt_tokens,
                    p.completion_tokens + extra.completion_tokens,
                    repr(p.spend_usd + extra.spend_usd)])
            except BaseException:
                self._requeue(key_id, owed)
                raise

    def _requeue(self, key_id: str, owed: Account) -> None:
        """Put back an account whose push failed, beside what was counted meanwhile."""
        newer = self._pending.get(key_id)
        if newer is None:
            self._pending[key_id] = owed
        elif newer.period_start == owed.period_start:
            newer.period.add(owed.period)
            newer.lifetime.add(owed.lifetime)
        else:                           # counted meanwhile in a later period
            newer.lifetime.add(owed.period)
            newer.lifetime.add(owed.lifetime)

    async def _back(self) -> None:
        await self.push()
        self._seeded.clear()        # a next outage starts from the spend Redis has then
        self.local.retain(())       # the fallback's windows end with the outage
        self._seen.clear()

    async def _periodic(self) -> None:
        await self.push()
        if self._live:
            keys: list[str] = []
            args: list[Any] = [self._lease_ms]
            for grant in list(self._live.values()):
                keys.append(f"{_GATEWAY}:slots")
                args.append(grant.gid)
                if grant.key_id is not None:
                    keys.append(f"{_names(grant.key_id)}:slots")
                    args.append(grant.gid)
            await self.link.call(self._renew, keys, args)


@functools.lru_cache(maxsize=16)
def _iso(moment: datetime) -> str:
    """A period start as ADMIT and FINISH compare it: the same few for every request."""
    return moment.isoformat()


def _names(key_id: str) -> str:
    return f"{PREFIX}c:{key_id}"


def _packed(args: list[Any]) -> str:
    """ADMIT's and FINISH's fields as their one argument (see truckllm.limits.redis_scripts)."""
    return "|".join(map(str, args))


def _opt(value: float | int | None) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)






def _account(raw: dict[Any, Any], period_start: datetime) -> Account:
    def number(name: str) -> int:
        return int(float(raw.get(name.encode(), b"0")))

    def money(name: str) -> float:
        return float(raw.get(name.encode(), b"0"))

    lifetime = Counters(number("lr"), number("lpt"), number("lct"), money("lsp"))
    period = Counters()
    if text(raw.get(b"ps", b"")) == period_start.isoformat():
        period = Counters(number("pr"), number("ppt"), number("pct"), money("psp"))
    return Account(period_start, period, lifetime)
