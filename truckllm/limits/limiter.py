"""Admission of client requests (key and gateway limits, budgets) and upstream-key
accounting. Runtime state that survives reloads, keyed by stable ids.

Everything here is synchronous on purpose: one event loop runs it, so a check and the
reservation that follows it can never interleave with another request's — that is what
makes the limits exact under concurrency. Must not import the server or dispatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from truckllm.errors import PermissionDenied, RateLimited
from truckllm.limits.accounts import Account, Counters
from truckllm.limits.budget import EPOCH, PeriodStarts, period_start
from truckllm.limits.clock import Clock, SystemClock
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.headers import format_ratelimit_headers
from truckllm.limits.meter import RateMeter, Refusal
from truckllm.limits.policy import NO_LIMITS, KeyPolicy, LimitsPolicy, RateLimits
from truckllm.limits.window import SlidingWindow, WindowEntry
from truckllm.usage import Usage


class RateLimitExceeded(RateLimited):
    """429 with Retry-After and the key's x-ratelimit-* headers."""

    def __init__(self, message: str, *, scope: str, limit: str, retry_after_s: float | None,
                 ratelimit: dict[str, str]) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.scope = scope          # key | gateway  (the llm_rate_limited_total label)
        self.limit = limit          # rpm | tpm | max_concurrent
        self.ratelimit = ratelimit

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.ratelimit}


class BudgetExceeded(PermissionDenied):
    code = "budget_exceeded"

    def __init__(self, message: str, *, ratelimit: dict[str, str]) -> None:
        super().__init__(message)
        self.ratelimit = ratelimit

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.ratelimit}


class Limiter:
    """Counters, windows and accounts for client keys, the gateway and upstream keys.

    Work is only done for what is limited: a key with no rate, cap or budget behind an
    unlimited gateway is admitted without a check, a window or the clock, and an upstream
    key without rpm/tpm is only counted. The in-flight counts are kept for every request
    all the same: they are reported, and a reload may add a cap while requests are out.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.changes = 0            # bumped on every change worth saving
        self._policy: LimitsPolicy | None = None
        self._gateway = RateMeter()
        self._key_meters: dict[str, RateMeter] = {}
        self._accounts: dict[str, Account] = {}
        self._entries: dict[str, _KeyEntry] = {}     # for the adopted policy; see _KeyEntry
        self._upstream_meters: dict[str, RateMeter] = {}
        self._upstream_counters: dict[str, Counters] = {}
        self._shared_uses: dict[str, UpstreamUse] = {}  # upstream keys without rpm/tpm
        self._periods = PeriodStarts()

    # -- config snapshots -------------------------------------------------------------

    def adopt(self, policy: LimitsPolicy) -> None:
        """Follow a new config snapshot: state of ids that are gone is dropped."""
        if policy is self._policy:
            return
        self._policy = policy
        self._entries, self._shared_uses = {}, {}     # both made for one policy
        for table in (self._key_meters, self._accounts):
            _keep_only(table, policy.keys)
        for upstream in (self._upstream_meters, self._upstream_counters):
            _keep_only(upstream, policy.upstream)

    # -- client requests --------------------------------------------------------------

    def admit(self, policy: LimitsPolicy, key_id: str | None,
              estimate_tokens: int | PromptEstimate) -> Admission:
        """Admit one request or raise BudgetExceeded (403) / RateLimitExceeded (429): see
        `Admission`, which the server makes directly."""
        return Admission(self, policy, key_id, _as_estimate(estimate_tokens))

    def key_headers(self, key: KeyPolicy | None) -> dict[str, str]:
        """The x-ratelimit-* headers for this key right now; {} for a key without limits."""
        if key is None or not key.sends_headers:
            return {}
        meter = self._key_meter(key.key_id)
        now = self.clock.monotonic()
        return format_ratelimit_headers(meter.requests_state(key.rates, now),
                                        meter.tokens_state(key.rates, now))

    def _check(self, gateway: RateLimits, entry: _KeyEntry | None, estimate: PromptEstimate,
               now: float) -> None:
        """The checks in their documented order: budget, the key's limits, the gateway's."""
        key = None if entry is None else entry.key
        if entry is not None and entry.key.limited:
            self._check_budget(entry.key, entry.account)
            refusal = entry.meter.refusal(entry.key.rates, estimate, now)
            if refusal is not None:
                raise self._refused("key", entry.key, refusal, estimate)
        refusal = self._gateway.refusal(gateway, estimate, now)
        if refusal is not None:
            raise self._refused("gateway", key, refusal, estimate)

    def _check_budget(self, key: KeyPolicy, account: Account) -> None:
        if key.budget_usd is None:
            return
        self._enter_current_period(account, key)
        if account.period.spend_usd >= key.budget_usd:
            raise BudgetExceeded(
                f"Budget exceeded for key {key.key_id!r}: spent ${account.period.spend_usd:.4f} "
                f"of ${key.budget_usd:g} ({key.budget_period}).",
                ratelimit=self.key_headers(key),
            )

    def _refused(self, scope: str, key: KeyPolicy | None, refusal: Refusal,
                 estimate: PromptEstimate) -> RateLimitExceeded:
        whose = f"key {key.key_id!r}" if scope == "key" and key else "the gateway"
        if refusal.configured == 0:
            message = f"The {refusal.limit} limit of {whose} is 0: no requests are allowed."
        elif refusal.retry_after_s is None:
            message = (f"Request too large for {whose}: about {estimate.tokens} tokens "
                       f"estimated, the {refusal.limit} limit is {refusal.configured}.")
        else:
            message = (f"Rate limit reached for {whose}: {refusal.limit} limit of "
                       f"{refusal.configured}. Retry after {refusal.retry_after_s:.1f}s.")
        return RateLimitExceeded(message, scope=scope, limit=refusal.limit,
                                 retry_after_s=refusal.retry_after_s,
                                 ratelimit=self.key_headers(key))

    def _key_meter(self, key_id: str) -> RateMeter:
        meter = self._key_meters.get(key_id)
        if meter is None:
            meter = self._key_meters[key_id] = RateMeter()
        return meter

    def _entry(self, key_id: str) -> _KeyEntry:
        """The key's entry under the adopted policy, made on its first request."""
        assert self._policy is not None
        key = self._policy.key(key_id)
        entry = self._entries[key_id] = _KeyEntry(key, self._account(key), self._key_meter(key_id))
        return entry

    def _account(self, key: KeyPolicy) -> Account:
        account = self._accounts.get(key.key_id)
        if account is None:
            account = Account(period_start=self._periods.current(key.budget_period, self.clock))
            self._accounts[key.key_id] = account
        return account

    def _enter_current_period(self, account: Account, key: KeyPolicy) -> None:
        account.enter(self._periods.current(key.budget_period, self.clock))

    # -- admin ------------------------------------------------------------------------

    def reset_key(self, policy: LimitsPolicy, key_id: str) -> bool:
        """Zero a key's period counters and rate windows; False for an unknown key.

        Requests in flight keep their concurrency slots (their release still comes).
        """
        self.adopt(policy)
        if key_id not in policy.keys:
            return False
        key = policy.keys[key_id]
        account = self._account(key)
        account.period_start = period_start(key.budget_period, self.clock.now())
        account.period.clear()
        self._key_meter(key_id).clear_windows()
        self.changes += 1
        return True

    def key_report(self, policy: LimitsPolicy, key_id: str) -> dict[str, Any]:
        """One key for GET /admin/v1/keys: counters, budget, limits and current use."""
        self.adopt(policy)
        key = policy.key(key_id)
        account = self._account(key)
        self._enter_current_period(account, key)
        meter = self._key_meter(key_id)
        now = self.clock.monotonic()
        budget_left = (None if key.budget_usd is None
                       else max(0.0, key.budget_usd - account.period.spend_usd))
        resets_at = account.resets_at(key.budget_period)
        return {
            "id": key_id,
            "requests": account.period.requests,
            "tokens": account.period.tokens,
            "prompt_tokens": account.period.prompt_tokens,
            "completion_tokens": account.period.completion_tokens,
            "spend_usd": account.period.spend_usd,
            "budget_usd": key.budget_usd,
            "budget_left_usd": budget_left,
            "budget_period": key.budget_period,
            "period_start": _iso(account.period_start) if key.budget_period != "total" else None,
            "period_resets_at": _iso(resets_at) if resets_at else None,
            "limits": key.rates.as_dict(),
            "current": {
                "requests_last_minute": meter.requests.used(now),
                "tokens_last_minute": meter.tokens.used(now),
                "in_flight": meter.in_flight,
            },
            "lifetime": {"requests": account.lifetime.requests, "tokens": account.lifetime.tokens,
                         "spend_usd": account.lifetime.spend_usd},
        }

    # -- upstream keys ----------------------------------------------------------------

    def upstream_has_capacity(self, policy: LimitsPolicy, ref: str,
                              estimate_tokens: int | PromptEstimate) -> bool:
        """Whether upstream key `ref` ("provider/key") can take one more request now."""
        rates = policy.upstream.get(ref, NO_LIMITS)
        if not rates.windowed:
            return True
        meter = self._upstream_meter(ref)
        return meter.refusal(rates, _as_estimate(estimate_tokens), self.clock.monotonic()) is None

    def upstream_wait_s(self, policy: LimitsPolicy, ref: str,
                        estimate_tokens: int | PromptEstimate) -> float | None:
        """Seconds until `ref` has capacity (0 if it has now); None if it never will."""
        rates = policy.upstream.get(ref, NO_LIMITS)
        refusal = self._upstream_meter(ref).refusal(rates, _as_estimate(estimate_tokens),
                                                    self.clock.monotonic())
        return 0.0 if refusal is None else refusal.retry_after_s

    def upstream_acquire(self, policy: LimitsPolicy, ref: str,
                         estimate_tokens: int | PromptEstimate) -> UpstreamUse:
        """Count one request sent with upstream key `ref`; settle it with the real usage."""
        if policy is not self._policy:
            self.adopt(policy)
        use = self._shared_uses.get(ref) or self._upstream_use(policy, ref, estimate_tokens)
        use._counters.requests += 1
        self.changes += 1
        return use

    def _upstream_use(self, policy: LimitsPolicy, ref: str,
                      estimate_tokens: int | PromptEstimate) -> UpstreamUse:
        """A use of `ref` for a key with rpm or tpm: this request's, holding its estimate in
        the windows. For a key without: the one its requests share under this policy."""
        counters = self._upstream_counters.get(ref)
        if counters is None:
            counters = self._upstream_counters[ref] = Counters()
        rates = policy.upstream.get(ref, NO_LIMITS)
        if not rates.windowed:
            use = self._shared_uses[ref] = UpstreamUse(self, counters, ())
            return use
        held = _reserve(self._upstream_meter(ref), rates, _as_estimate(estimate_tokens),
                        self.clock.monotonic())
        return UpstreamUse(self, counters, held)

    def upstream_report(self, ref: str) -> dict[str, Any]:
        counters = self._upstream_counters.get(ref, Counters())
        return {"requests": counters.requests, "tokens": counters.tokens,
                "prompt_tokens": counters.prompt_tokens,
                "completion_tokens": counters.completion_tokens, "spend_usd": counters.spend_usd}

    def _upstream_meter(self, ref: str) -> RateMeter:
        meter = self._upstream_meters.get(ref)
        if meter is None:
            meter = self._upstream_meters[ref] = RateMeter()
        return meter

    # -- persistence ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Usage and spend as JSON-able data (rate windows are not saved)."""
        return {
            "client_keys": {key_id: account.as_dict() for key_id, account in self._accounts.items()},
            "upstream_keys": {ref: counters.as_dict()
                              for ref, counters in self._upstream_counters.items()},
        }

    def restore(self, data: Any) -> None:
        """Load what `snapshot` wrote; raises ValueError (changing nothing) if malformed."""
        if not isinstance(data, dict):
            raise ValueError("state must be an object")
        clients, upstream = data.get("client_keys", {}), data.get("upstream_keys", {})
        if not isinstance(clients, dict) or not isinstance(upstream, dict):
            raise ValueError("client_keys and upstream_keys must be objects")
        accounts = {str(k): Account.from_dict(v) for k, v in clients.items()}
        counters = {str(k): Counters.from_dict(v) for k, v in upstream.items()}
        self._accounts.update(accounts)
        self._upstream_counters.update(counters)
        self._entries, self._shared_uses = {}, {}     # they hold replaced counters
        if self._policy is not None:
            policy, self._policy = self._policy, None
            self.adopt(policy)


class _KeyEntry:
    """A client key under one config snapshot: its policy, and the account and meter it
    charges (those outlive the snapshot). Made on the key's first request under the
    snapshot, so admitting a request looks up one thing instead of three.

    A key whose budget period is `total` never changes period, so its account enters that
    period here, once, and settling skips the period check (`dated` is False).
    """

    __slots__ = ("account", "counters", "dated", "key", "meter")

    def __init__(self, key: KeyPolicy, account: Account, meter: RateMeter) -> None:
        self.key = key
        self.account = account
        self.meter = meter
        self.counters = (account.period, account.lifetime)   # both count every request
        self.dated = key.budget_period != "total"
        if not self.dated:
            account.enter(EPOCH)


class Admission:
    """One admitted client request: settle it with its real usage, release its slot.

    Admitting a request is making its Admission (one call on the hot path, where
    `Limiter.admit` and a constructor were two): the constructor raises BudgetExceeded
    (403) / RateLimitExceeded (429) instead when a check fails. Nothing is counted for a
    refused request. An admitted one holds a concurrency slot until `release()`.
    """

    __slots__ = ("_entry", "_held", "_limiter", "_released", "_settled", "estimate", "policy")

    def __init__(self, limiter: Limiter, policy: LimitsPolicy, key_id: str | None,
                 estimate: PromptEstimate) -> None:
        if policy is not limiter._policy:
            limiter.adopt(policy)
        entry = None if key_id is None else limiter._entries.get(key_id) or limiter._entry(key_id)
        gateway = policy.gateway
        now = 0.0                   # read only when some window is
        if gateway.limited or (entry is not None and entry.key.limited):
            now = limiter.clock.monotonic()
            limiter._check(gateway, entry, estimate, now)
        # every check passed: only now is anything counted
        limiter._gateway.in_flight += 1
        held = _reserve(limiter._gateway, gateway, estimate, now) if gateway.windowed else ()
        if entry is not None:
            entry.meter.in_flight += 1
            rates = entry.key.rates
            if rates.windowed:
                held += _reserve(entry.meter, rates, estimate, now)
            period, lifetime = entry.counters       # both count every request
            period.requests += 1
            lifetime.requests += 1
        limiter.changes += 1
        self._limiter = limiter
        self.policy = policy            # the snapshot's: its prices price the request
        self._entry = entry             # its meter holds a slot, as the gateway's meter does
        self._held = held
        self.estimate = estimate
        self._settled = False
        self._released = False

    @property
    def key(self) -> KeyPolicy | None:
        return None if self._entry is None else self._entry.key

    @property
    def estimate_tokens(self) -> int:
        return self.estimate.tokens

    def headers(self) -> dict[str, str]:
        """x-ratelimit-* for this key as they stand now (this request included)."""
        return self._limiter.key_headers(self.key)

    def settle(self, usage: Usage | None, cost_usd: float = 0.0,
               upstream: UpstreamUse | None = None) -> None:
        """Replace the token estimate with real usage and add the spend; once. The slots
        stay held: see `end`."""
        self.end(usage, cost_usd, upstream, True, False)

    def release(self) -> None:
        """Give back the concurrency slots; safe to call more than once."""
        self.end(None, 0.0, None, False, True)

    def end(self, usage: Usage | None, cost_usd: float, upstream: UpstreamUse | None,
            settling: bool = True, releasing: bool = True) -> None:
        """Settle (`settling`) and release (`releasing`): how a request ends, in one call.

        Settling replaces the token estimate with real usage and adds the spend, once:
        `usage=None` (never reported, e.g. the client left mid-stream) keeps the estimate
        in the token windows and adds only `cost_usd`. `upstream`: the use of the upstream
        key the request was sent with, settled with the same usage and cost (one charge
        for both instead of two). Releasing gives back the concurrency slots, once.
        """
        limiter, entry = self._limiter, self._entry
        try:
            if not settling:
                pass
            elif self._settled:
                if upstream is not None:
                    upstream.settle(usage, cost_usd)
            else:
                self._settled = True
                held = self._held
                counters: tuple[Counters, ...] = ()
                if entry is not None:
                    if entry.dated:
                        entry.account.enter(limiter._periods.current(entry.key.budget_period,
                                                                     limiter.clock))
                    counters = entry.counters
                if upstream is not None:
                    held += upstream._held
                    counters += (upstream._counters,)
                _charge(limiter, held, counters, usage, cost_usd)
        finally:                        # the slots come back even if settling failed
            if releasing and not self._released:
                self._released = True
                limiter._gateway.in_flight -= 1
                if entry is not None:
                    entry.meter.in_flight -= 1


class UpstreamUse:
    """What `Limiter.upstream_acquire` gives for one request sent with an upstream key: the
    caller settles it once per acquire, with the request's real usage.

    For a key with rpm or tpm it is the request's own and holds its token estimate in the
    windows until then. A key without has nothing to hold: its requests share one use per
    config snapshot, so counting one costs no allocation.
    """

    __slots__ = ("_counters", "_held", "_limiter")

    def __init__(self, limiter: Limiter, counters: Counters, held: _Held) -> None:
        self._limiter = limiter
        self._counters = counters
        self._held = held

    def settle(self, usage: Usage | None, cost_usd: float = 0.0) -> None:
        _charge(self._limiter, self._held, (self._counters,), usage, cost_usd)


def _charge(limiter: Limiter, held: _Held, counters: Iterable[Counters], usage: Usage | None,
            cost_usd: float) -> None:
    """Count a settled request: its real usage replaces the token estimates it `held`
    (kept when `usage` is None: never reported), and its usage and spend are added to
    each of `counters`."""
    prompt = completion = 0
    if usage is not None:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        if held:
            _reconcile(held, usage, limiter.clock.monotonic())
    for each in counters:
        each.prompt_tokens += prompt
        each.completion_tokens += completion
        each.spend_usd += cost_usd
    limiter.changes += 1


# The token entries a request holds in tpm windows until its real usage replaces them;
# () when no tpm applies, which costs no allocation.
_Held = tuple[tuple[SlidingWindow, WindowEntry], ...]


def _reserve(meter: RateMeter, rates: RateLimits, estimate: PromptEstimate, now: float) -> _Held:
    """Count one request in the windows of `rates` that are set (the caller knows some is)."""
    entry = meter.reserve(rates, estimate, now)
    return () if entry is None else ((meter.tokens, entry),)


def _reconcile(held: _Held, usage: Usage, now: float) -> None:
    for window, entry in held:
        window.reconcile(entry, usage.total_tokens, now)


def _as_estimate(estimate: int | PromptEstimate) -> PromptEstimate:
    return estimate if isinstance(estimate, PromptEstimate) else PromptEstimate.known(estimate)


def _keep_only(table: dict[str, Any], ids: Any) -> None:
    for gone in [key for key in table if key not in ids]:
        del table[gone]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
