"""Runtime state of client keys and the gateway: rate windows, concurrency slots, usage
and spend, behind one interface (`ClientStore`), with the in-memory implementation.

The store owns the check-and-count: `admit` checks a request against the budget, the key's
limits and the gateway's and, only if all pass, counts it everywhere, as one step. That
step must be atomic in every implementation (in memory: no suspension point inside it; on
a shared server: one server-side operation), because it is what makes the limits exact
under concurrency. The methods that count are awaitable so a shared backend can make them
one round trip; the in-memory store never suspends.

What the store keeps is keyed by stable ids (client key ids), never by config snapshot, so
it survives reloads. What it does not decide: the order of the checks and what they mean
(the policy: truckllm.limits.policy), messages and headers (truckllm.limits.limiter).
Must not import the server, the pipeline or the limiter.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from truckllm.clock import Clock
from truckllm.limits.accounts import Account, Counters
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.headers import LimitState
from truckllm.limits.meter import Held, RateMeter, Refusal, reconcile, reserve
from truckllm.limits.policy import KeyPolicy, RateLimits
from truckllm.usage import Usage


class LimitScope(StrEnum):
    """Whose limit refused a request: the `scope` label of llm_rate_limited_total."""

    KEY = "key"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Refused:
    """Why `admit` counted nothing: a rate limit (`scope` and `refusal`) or the budget
    (`scope` None, `spend_usd` what the period has spent)."""

    scope: LimitScope | None
    refusal: Refusal | None = None
    spend_usd: float = 0.0


class Grant:
    """An admitted request as the store knows it: which key's slot it holds and what it
    reserved in the windows. Settled once, released once (the limiter sees to that).
    `counted`: made by `count`, it reserved nothing, and `finish_counted` ends it; such
    grants of a key are all alike, so a store may hand out one to all its requests."""

    __slots__ = ("counted", "held", "key_id", "record")

    def __init__(self, key_id: str | None, record: ClientRecord | None, held: Held,
                 counted: bool = False) -> None:
        self.key_id = key_id
        self.record = record
        self.held = held
        self.counted = counted


class ClientStore(Protocol):
    """Where client keys' and the gateway's state lives (see docs/dev/state.md)."""

    changes: int            # moves on every change worth saving (the state file saver)

    async def admit(self, gateway: RateLimits, key: KeyPolicy | None, estimate: PromptEstimate,
                    period_start: datetime) -> Grant | Refused:
        """Check the request against the key's budget for the period starting at
        `period_start`, the key's rate limits, the gateway's (in that order); if all pass,
        count it in every window, take a concurrency slot of the key and of the gateway,
        and count one request in the key's usage. Atomic: nothing is counted on refusal."""
        ...

    def count(self, key: KeyPolicy | None, period_start: datetime) -> Grant:
        """`admit` for a request nothing limits (no rate, cap or budget on the key, none on
        the gateway): nothing to check, so it is counted at once — a concurrency slot of
        the key and of the gateway, one request in the key's usage — without an operation
        to wait for. Its grant ends with `finish_counted`."""
        ...

    async def settle(self, grant: Grant, usage: Usage | None, cost_usd: float,
                     period_start: datetime) -> None:
        """Replace the grant's token reservations with real usage (`None`: never reported,
        the estimate stays) and add the usage and spend to the key's period (the one
        starting at `period_start`) and lifetime."""
        ...

    async def release(self, grant: Grant) -> None:
        """Give back the concurrency slots the grant holds."""
        ...

    async def finish(self, grant: Grant, usage: Usage | None, cost_usd: float,
                     period_start: datetime) -> None:
        """`settle` and `release` as one operation (one round trip): how a request ends.
        The slots come back even if settling fails."""
        ...

    def finish_counted(self, grant: Grant, usage: Usage | None, cost_usd: float,
                       period_start: datetime) -> None:
        """`finish` of a grant `count` made: it reserved nothing, so its end is counted
        at once, without an operation to wait for."""
        ...

    def window_state(self, key_id: str, rates: RateLimits) -> tuple[LimitState | None,
                                                                    LimitState | None]:
        """The key's rpm and tpm windows as they stand (for x-ratelimit-* headers). May be
        the state last seen rather than read now: it is asked for every response."""
        ...

    async def account(self, key_id: str, period_start: datetime) -> Account:
        """A copy of the key's usage and spend, in the period starting at `period_start`."""
        ...

    async def current(self, key_id: str) -> tuple[int, int, int]:
        """Requests and tokens in the key's windows now, and its requests in flight."""
        ...

    async def reset(self, key_id: str, period_start: datetime) -> None:
        """Zero the key's period counters and rate windows (slots in use stay held)."""
        ...

    def retain(self, key_ids: Collection[str]) -> None:
        """After a reload: drop the state of keys that are gone."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Every key's usage and spend, JSON-able (the state file's `client_keys`)."""
        ...

    def restore(self, accounts: dict[str, Account]) -> None:
        """Replace the saved usage and spend of these keys."""
        ...


class ClientRecord:
    """One client key in memory: its usage and spend, its windows and its slots, and the
    grant `count` gives its requests."""

    __slots__ = ("account", "counted", "meter")

    def __init__(self, key_id: str, account: Account) -> None:
        self.account = account
        self.meter = RateMeter()
        self.counted = Grant(key_id, self, (), counted=True)


class MemoryClientStore:
    """The client keys of one process, in dicts; the state file saves their accounts."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.changes = 0
        self.gateway = RateMeter()
        self._records: dict[str, ClientRecord] = {}
        self._keyless = Grant(None, None, (), counted=True)    # `count` without a key

    async def admit(self, gateway: RateLimits, key: KeyPolicy | None, estimate: PromptEstimate,
                    period_start: datetime) -> Grant | Refused:
        if not (gateway.limited or (key is not None and key.limited)):
            return self.count(key, period_start)
        record = None
        if key is not None:
            record = self._record(key.key_id, period_start)
            record.account.enter(period_start)
        now = self.clock.monotonic()
        refused = self._refused(gateway, key, record, estimate, now)
        if refused is not None:
            return refused
        # every check passed: only now is anything counted
        self.gateway.in_flight += 1
        held = reserve(self.gateway, gateway, estimate, now) if gateway.windowed else ()
        if record is not None:
            assert key is not None
            record.meter.in_flight += 1
            if key.rates.windowed:
                held += reserve(record.meter, key.rates, estimate, now)
            record.account.period.requests += 1
            record.account.lifetime.requests += 1
        self.changes += 1
        return Grant(None if key is None else key.key_id, record, held)

    def count(self, key: KeyPolicy | None, period_start: datetime) -> Grant:
        self.gateway.in_flight += 1
        self.changes += 1
        if key is None:
            return self._keyless
        record = self._record(key.key_id, period_start)
        account = record.account
        account.enter(period_start)
        record.meter.in_flight += 1
        account.period.requests += 1
        account.lifetime.requests += 1
        return record.counted

    def _refused(self, gateway: RateLimits, key: KeyPolicy | None, record: ClientRecord | None,
                 estimate: PromptEstimate, now: float) -> Refused | None:
        if key is not None and record is not None and key.limited:
            spend = record.account.period.spend_usd
            if key.budget_usd is not None and spend >= key.budget_usd:
                return Refused(None, spend_usd=spend)
            refusal = record.meter.refusal(key.rates, estimate, now)
            if refusal is not None:
                return Refused(LimitScope.KEY, refusal)
        refusal = self.gateway.refusal(gateway, estimate, now)
        return None if refusal is None else Refused(LimitScope.GATEWAY, refusal)

    async def settle(self, grant: Grant, usage: Usage | None, cost_usd: float,
                     period_start: datetime) -> None:
        self._settle(grant, usage, cost_usd, period_start)

    async def release(self, grant: Grant) -> None:
        self._release(grant)

    async def finish(self, grant: Grant, usage: Usage | None, cost_usd: float,
                     period_start: datetime) -> None:
        self.finish_counted(grant, usage, cost_usd, period_start)

    def finish_counted(self, grant: Grant, usage: Usage | None, cost_usd: float,
                       period_start: datetime) -> None:
        # In memory every grant ends at once, whether `admit` or `count` made it. The
        # slots are given back first, so they come back even if settling fails.
        self._release(grant)
        self._settle(grant, usage, cost_usd, period_start)

    def _settle(self, grant: Grant, usage: Usage | None, cost_usd: float,
                period_start: datetime) -> None:
        held = grant.held
        prompt = completion = 0
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
            if held:
                reconcile(held, usage, self.clock.monotonic())
        record = grant.record
        if record is not None:
            account = record.account
            account.enter(period_start)
            for counters in (account.period, account.lifetime):
                counters.prompt_tokens += prompt
                counters.completion_tokens += completion
                counters.spend_usd += cost_usd
        self.changes += 1

    def _release(self, grant: Grant) -> None:
        self.gateway.in_flight -= 1
        if grant.record is not None:
            grant.record.meter.in_flight -= 1

    def window_state(self, key_id: str, rates: RateLimits) -> tuple[LimitState | None,
                                                                    LimitState | None]:
        record = self._records.get(key_id)
        meter = record.meter if record is not None else RateMeter()
        now = self.clock.monotonic()
        return meter.requests_state(rates, now), meter.tokens_state(rates, now)

    async def account(self, key_id: str, period_start: datetime) -> Account:
        account = self._record(key_id, period_start).account
        account.enter(period_start)
        return Account(account.period_start, _copy(account.period), _copy(account.lifetime))

    async def current(self, key_id: str) -> tuple[int, int, int]:
        record = self._records.get(key_id)
        if record is None:
            return 0, 0, 0
        now = self.clock.monotonic()
        meter = record.meter
        return meter.requests.used(now), meter.tokens.used(now), meter.in_flight

    async def reset(self, key_id: str, period_start: datetime) -> None:
        record = self._record(key_id, period_start)
        record.account.period_start = period_start
        record.account.period.clear()
        record.meter.clear_windows()
        self.changes += 1

    def retain(self, key_ids: Collection[str]) -> None:
        for gone in [key_id for key_id in self._records if key_id not in key_ids]:
            del self._records[gone]

    def snapshot(self) -> dict[str, Any]:
        return {key_id: record.account.as_dict() for key_id, record in self._records.items()}

    def restore(self, accounts: dict[str, Account]) -> None:
        for key_id, account in accounts.items():
            record = self._records.get(key_id)
            if record is None:
                self._records[key_id] = ClientRecord(key_id, account)
            else:       # in place: requests in flight settle into the restored counters
                record.account.period_start = account.period_start
                record.account.period, record.account.lifetime = account.period, account.lifetime

    def _record(self, key_id: str, period_start: datetime) -> ClientRecord:
        record = self._records.get(key_id)
        if record is None:
            record = self._records[key_id] = ClientRecord(key_id, Account(period_start))
        return record


def _copy(counters: Counters) -> Counters:
    return Counters(counters.requests, counters.prompt_tokens, counters.completion_tokens,
                    counters.spend_usd)
