"""The server's side of limits: admit a /v1 request before dispatch, put the key's
x-ratelimit-* headers on its response, and settle cost and usage when it ends (streams
included, client disconnects included). The counting itself lives in truckllm.limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from truckllm.limits import (
    NO_PROMPT,
    Admission,
    KeyPolicy,
    Limiter,
    PromptEstimate,
    RateLimitExceeded,
    UpstreamUse,
)
from truckllm.limits.cost import price
from truckllm.pipeline.record import Exchange
from truckllm.runtime.state import ClientKey, Route, State


def admit_at_once(limiter: Limiter, state: State, key: ClientKey | None,
                  body: dict[str, Any]) -> Admission | None:
    """A request nothing limits (most are) admitted without a coroutine to await: there is
    nothing to check or refuse. None for any other: await `admit` then."""
    return limiter.count(state.limits, key.id if key else None, _estimate(state, body))


async def admit(limiter: Limiter, state: State, key: ClientKey | None, body: dict[str, Any],
                exchange: Exchange) -> Admission:
    """Refuse (403 budget_exceeded, 429 rate limit) or admit before any upstream call."""
    try:
        return await limiter.admit(state.limits, key.id if key else None, _estimate(state, body))
    except RateLimitExceeded as refused:
        exchange.limit_scope = refused.scope        # metrics: llm_rate_limited_total{scope}
        exchange.error_reason = f"rate_limited:{refused.scope.value}"     # the access log's
        raise


def _estimate(state: State, body: dict[str, Any]) -> PromptEstimate:
    # The estimate is only read under a tpm or for a stream (`stream` is what makes the
    # handler stream): other requests carry none, rather than one never worked out.
    return PromptEstimate(body) if state.limits.tpm_limited or body.get("stream") else NO_PROMPT


def ratelimit_headers_reader(limiter: Limiter, key: KeyPolicy) -> Callable[[], dict[str, str]]:
    """() -> the x-ratelimit-* headers of `key`, one of the snapshot's `sending_headers`
    (found there at auth: most keys send none, and are not looked up any further), as they
    stand when the response goes out."""
    return partial(limiter.key_headers, key)


def end(admission: Admission, exchange: Exchange, route: Route,
        upstream_use: UpstreamUse | None) -> Awaitable[None] | None:
    """Price the request's real usage, charge it to the client key and the upstream key,
    release the client key's concurrency slot. Done at once when nothing need be awaited
    (a request nothing limits, whose upstream key holds nothing for it: most); otherwise
    the rest of it is returned, for the caller to await."""
    usage = exchange.usage
    cost_usd = 0.0
    try:
        if usage is not None:
            prices = admission.policy.prices.get(route.alias)   # the alias's `pricing`
            if prices is not None:
                cost_usd, exchange.cost_lines = price(usage, prices)   # lines: access line
                exchange.cost_usd = cost_usd
    except BaseException as exc:
        return _released(admission, exc)    # a bug in pricing must not keep the slot
    if admission.finish_at_once(usage, cost_usd, upstream_use):
        return None
    return admission.finish(usage, cost_usd, upstream_use)


async def _released(admission: Admission, exc: BaseException) -> None:
    """Give back the request's slots, then raise `exc` (what pricing raised)."""
    await admission.release()
    raise exc
