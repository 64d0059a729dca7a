"""Admission of client requests (key and gateway limits, budgets) and upstream-key
accounting: the rules and their answers (errors, headers, reports), over two stores of
runtime state that survive reloads — client keys and the gateway in a `ClientStore`
(truckllm.limits.clients), upstream keys in the `UpstreamStore` shared with routing
health (truckllm.limits.upstream).

A check and the counting that follows it are one store operation (`admit`, and
`upstream_acquire` for an upstream key's rpm/tpm), so no other request's can come between
them: that is what makes the limits exact under concurrency. Must not import the server
or dispatch.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from truckllm.clock import Clock, SystemClock
from truckllm.errors import PermissionDenied, RateLimited
from truckllm.limits.accounts import Account, Counters
from truckllm.limits.budget import EPOCH, PeriodStarts, period_start
from truckllm.limits.clients import ClientStore, Grant, LimitScope, MemoryClientStore, Refused
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.headers import format_ratelimit_headers
from truckllm.limits.meter import Refusal
from truckllm.limits.policy import NO_LIMITS, KeyPolicy, LimitsPolicy
from truckllm.limits.upstream import Hold, MemoryUpstreamStore, UpstreamStore
from truckllm.usage import Usage

__all__ = ["Admission", "BudgetExceeded", "LimitScope", "Limiter", "RateLimitExceeded",
           "UpstreamUse"]


class RateLimitExceeded(RateLimited):
    """429 with Retry-After and the key's x-ratelimit-* headers."""

    def __init__(self, message: str, *, scope: LimitScope, limit: str,
                 retry_after_s: float | None, ratelimit: dict[str, str]) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.scope = scope
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
    """Limits of client keys, the gateway and upstream keys, over their stores.

    Work is only done for what is limited: a key with no rate, cap or budget behind an
    unlimited gateway is admitted without a check, a window or the clock, and an upstream
    key without rpm/tpm is only counted. The in-flight counts are kept for every request
    all the same: they are reported, and a reload may add a cap while requests are out.
    """

    def __init__(self, clock: Clock | None = None, *, clients: ClientStore | None = None,
                 upstream: UpstreamStore | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.clients: ClientStore = clients if clients is not None else MemoryClientStore(self.clock)
        self.upstream: UpstreamStore = (upstream if upstream is not None
                                        else MemoryUpstreamStore(self.clock))
        self._policy: LimitsPolicy | None = None
        self._shared_uses: dict[str, UpstreamUse] = {}  # upstream keys without a tpm
        self._periods = PeriodStarts()

    @property
    def changes(self) -> int:
        """Moves on every change worth saving in the state file."""
        return self.clients.changes + self.upstream.changes

    # -- config snapshots -------------------------------------------------------------

    def adopt(self, policy: LimitsPolicy) -> None:
        """Follow a new config snapshot: state of ids that are gone is dropped."""
        if policy is self._policy:
            return
        self._policy = policy
        self._shared_uses = {}          # some of their keys may be gone
        self.clients.retain(policy.keys)
        self.upstream.retain(policy.upstream)

    # -- client requests --------------------------------------------------------------

    async def admit(self, policy: LimitsPolicy, key_id: str | None,
                    estimate_tokens: int | PromptEstimate) -> Admission:
        """Admit one request or raise BudgetExceeded (403) / RateLimitExceeded (429).

        The checks run in their documented order (budget, the key's limits, the gateway's)
        and nothing is counted for a refused request; an admitted one is counted in every
        window at once and holds a concurrency slot until `Admission.release()`.
        """
        estimate = _as_estimate(estimate_tokens)
        if policy is not self._policy:
            self.adopt(policy)
        key = None if key_id is None else policy.key(key_id)
        granted = await self.clients.admit(policy.gateway, key, estimate,
                                           self.period_start_of(key))
        if isinstance(granted, Refused):
            raise self._refused(granted, key, estimate)
        return Admission(self, policy, key, granted, estimate)

    def count(self, policy: LimitsPolicy, key_id: str | None,
              estimate: PromptEstimate) -> Admission | None:
        """`admit` for a request nothing limits (no rate, cap or budget on its key, none on
        the gateway), which has nothing to check or refuse: counted at once, without a
        store operation to await. None when something is limited: `admit` takes those."""
        if policy.gateway.limited:
            return None
        key = None
        if key_id is not None:
            key = policy.key(key_id)
            if key.limited:
                return None
        if policy is not self._policy:
            self.adopt(policy)
        grant = self.clients.count(key, self.period_start_of(key))
        return Admission(self, policy, key, grant, estimate)

    def key_headers(self, key: KeyPolicy | None) -> dict[str, str]:
        """The x-ratelimit-* headers for this key right now; {} for a key without limits."""
        if key is None or not key.sends_headers:
            return {}
        return format_ratelimit_headers(*self.clients.window_state(key.key_id, key.rates))

    def _refused(self, refused: Refused, key: KeyPolicy | None,
                 estimate: PromptEstimate) -> BudgetExceeded | RateLimitExceeded:
        if refused.refusal is None or refused.scope is None:
            assert key is not None
            return BudgetExceeded(
                f"Budget exceeded for key {key.key_id!r}: spent ${refused.spend_usd:.4f} "
                f"of ${key.budget_usd:g} ({key.budget_period}).",
                ratelimit=self.key_headers(key),
            )
        return self._rate_limited(refused.scope, key, refused.refusal, estimate)

    def _rate_limited(self, scope: LimitScope, key: KeyPolicy | None, refusal: Refusal,
                      estimate: PromptEstimate) -> RateLimitExceeded:
        whose = f"key {key.key_id!r}" if scope is LimitScope.KEY and key else "the gateway"
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

    def period_start_of(self, key: KeyPolicy | None) -> datetime:
        """When the key's current budget period began (EPOCH for `total` or no key)."""
        if key is None or key.budget_period == "total":
            return EPOCH
        return self._periods.current(key.budget_period, self.clock)

    # -- admin ------------------------------------------------------------------------

    async def reset_key(self, policy: LimitsPolicy, key_id: str) -> bool:
        """Zero a key's period counters and rate windows; False for an unknown key.

        Requests in flight keep their concurrency slots (their release still comes).
        """
        self.adopt(policy)
        if key_id not in policy.keys:
            return False
        key = policy.keys[key_id]
        await self.clients.reset(key_id, period_start(key.budget_period, self.clock.now()))
        return True

    async def key_report(self, policy: LimitsPolicy, key_id: str) -> dict[str, Any]:
        """One key for GET /admin/v1/keys: counters, budget, limits and current use."""
        self.adopt(policy)
        key = policy.key(key_id)
        account = await self.clients.account(key_id, self.period_start_of(key))
        requests, tokens, in_flight = await self.clients.current(key_id)
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
                "requests_last_minute": requests,
                "tokens_last_minute": tokens,
                "in_flight": in_flight,
            },
            "lifetime": {"requests": account.lifetime.requests, "tokens": account.lifetime.tokens,
                         "spend_usd": account.lifetime.spend_usd},
        }

    # -- upstream keys ----------------------------------------------------------------

    def upstream_has_capacity(self, policy: LimitsPolicy, ref: str,
                              estimate_tokens: int | PromptEstimate) -> bool:
        """Whether upstream key `ref` ("provider/key") can take one more request now."""
        rates = policy.upstream.get(ref, NO_LIMITS)
        return not rates.windowed or self.upstream.refusal(
            ref, rates, _as_estimate(estimate_tokens)) is None

    def upstream_wait_s(self, policy: LimitsPolicy, ref: str,
                        estimate_tokens: int | PromptEstimate) -> float | None:
        """Seconds until `ref` has capacity (0 if it has now); None if it never will."""
        rates = policy.upstream.get(ref, NO_LIMITS)
        if not rates.windowed:
            return 0.0
        refusal = self.upstream.refusal(ref, rates, _as_estimate(estimate_tokens))
        return 0.0 if refusal is None else refusal.retry_after_s

    async def upstream_acquire(self, policy: LimitsPolicy, ref: str,
                               estimate_tokens: int | PromptEstimate) -> UpstreamUse | None:
        """Count one request sent with upstream key `ref`; settle it with the real usage.
        None: the key's rpm/tpm has no room for it after all (a shared store: another
        instance took it since the router asked); nothing was counted, and
        `upstream_has_capacity` now says so until it has."""
        if policy is not self._policy:
            self.adopt(policy)
        held = await self.upstream.acquire(ref, policy.upstream.get(ref, NO_LIMITS),
                                           _as_estimate(estimate_tokens))
        if isinstance(held, Refusal):
            return None
        if held:
            return UpstreamUse(self.upstream, ref, held)
        # Nothing held (no tpm on the key): the uses of a key are all alike, so one is kept.
        use = self._shared_uses.get(ref)
        if use is None:
            use = self._shared_uses[ref] = UpstreamUse(self.upstream, ref, ())
        return use

    def upstream_count(self, policy: LimitsPolicy, ref: str) -> UpstreamUse | None:
        """`upstream_acquire` for a key without rpm or tpm, which has nothing to check or
        hold: its request counted at once, without a store operation to await. None for a
        key with either: `upstream_acquire` takes those."""
        if policy.limits_upstream and policy.upstream.get(ref, NO_LIMITS).windowed:
            return None
        if policy is not self._policy:
            self.adopt(policy)
        self.upstream.count(ref)
        use = self._shared_uses.get(ref)
        if use is None:
            use = self._shared_uses[ref] = UpstreamUse(self.upstream, ref, ())
        return use

    # -- persistence ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Usage and spend as JSON-able data (rate windows are not saved)."""
        return {"client_keys": self.clients.snapshot(),
                "upstream_keys": self.upstream.usage_snapshot()}

    def restore(self, data: Any) -> None:
        """Load what `snapshot` wrote; raises ValueError (changing nothing) if malformed."""
        if not isinstance(data, dict):
            raise ValueError("state must be an object")
        clients, upstream = data.get("client_keys", {}), data.get("upstream_keys", {})
        if not isinstance(clients, dict) or not isinstance(upstream, dict):
            raise ValueError("client_keys and upstream_keys must be objects")
        accounts = {str(k): Account.from_dict(v) for k, v in clients.items()}
        counters = {str(k): Counters.from_dict(v) for k, v in upstream.items()}
        self.clients.restore(accounts)
        self.upstream.restore_usage(counters)
        if self._policy is not None:
            policy, self._policy = self._policy, None
            self.adopt(policy)


class Admission:
    """One admitted client request (made by `Limiter.admit`): settle it with its real
    usage, release its concurrency slot. Each happens once, whatever the order of calls."""

    __slots__ = ("_grant", "_limiter", "_released", "_settled", "estimate", "key", "policy")

    def __init__(self, limiter: Limiter, policy: LimitsPolicy, key: KeyPolicy | None,
                 grant: Grant, estimate: PromptEstimate) -> None:
        self._limiter = limiter
        self.policy = policy            # the snapshot's: its prices price the request
        self.key = key
        self._grant = grant
        self.estimate = estimate
        self._settled = False
        self._released = False

    async def settle(self, usage: Usage | None, cost_usd: float = 0.0,
                     upstream: UpstreamUse | None = None) -> None:
        """Replace the token estimate with real usage and add the spend, once:
        `usage=None` (never reported, e.g. the client left mid-stream) keeps the estimate
        in the token windows and adds only `cost_usd`. `upstream`: the use of the upstream
        key the request was sent with, settled with the same usage and cost. The slots
        stay held: see `release`."""
        if not self._settled:
            self._settled = True
            limiter = self._limiter
            await limiter.clients.settle(self._grant, usage, cost_usd,
                                         limiter.period_start_of(self.key))
        if upstream is not None:
            await upstream.settle(usage, cost_usd)

    async def release(self) -> None:
        """Give back the concurrency slots; safe to call more than once."""
        if not self._released:
            self._released = True
            await self._limiter.clients.release(self._grant)

    async def finish(self, usage: Usage | None, cost_usd: float = 0.0,
                     upstream: UpstreamUse | None = None) -> None:
        """How a request ends: `settle`, then `release`, as one store operation."""
        if self._settled or self._released:     # one of them happened already
            try:
                await self.settle(usage, cost_usd, upstream)
            finally:
                await self.release()
            return
        self._settled = self._released = True
        limiter = self._limiter
        await limiter.clients.finish(self._grant, usage, cost_usd,
                                     limiter.period_start_of(self.key))
        if upstream is not None:
            await upstream.settle(usage, cost_usd)

    def finish_at_once(self, usage: Usage | None, cost_usd: float = 0.0,
                       upstream: UpstreamUse | None = None) -> bool:
        """`finish` without a store operation to await, for a request admitted without a
        check (`Limiter.count`, or `admit` of a key nothing limits) whose upstream use (if
        any) holds nothing: nothing reserved to replace, so its end is counted at once.
        False, with nothing done, for any other: await `finish` then."""
        if (not self._grant.counted or self._settled or self._released
                or (upstream is not None and upstream.held)):
            return False
        self._settled = self._released = True
        limiter = self._limiter
        limiter.clients.finish_counted(self._grant, usage, cost_usd,
                                       limiter.period_start_of(self.key))
        if upstream is not None:
            upstream.store.add_usage(upstream.ref, usage, cost_usd)
        return True


class UpstreamUse:
    """What `Limiter.upstream_acquire` gives for one request sent with an upstream key: the
    caller settles it once per acquire, with the request's real usage.

    For a key with a tpm it is the request's own and holds its token estimate in the
    window until then. A key without has nothing to hold: its requests share one use.
    """

    __slots__ = ("held", "ref", "store")

    def __init__(self, store: UpstreamStore, ref: str, held: Hold) -> None:
        self.store = store
        self.ref = ref
        self.held = held

    def settle(self, usage: Usage | None, cost_usd: float = 0.0) -> Awaitable[None]:
        """The store's settle of this use (await it)."""
        return self.store.settle(self.ref, self.held, usage, cost_usd)


def _as_estimate(estimate: int | PromptEstimate) -> PromptEstimate:
    return estimate if isinstance(estimate, PromptEstimate) else PromptEstimate.known(estimate)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
