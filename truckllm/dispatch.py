"""The only module that combines translation and transport for one client request.

It asks the router for candidates (targets in strategy order, each with its keys), and
tries them in turn: builds the upstream request with the provider's spec, sends it,
classifies a failure (truckllm.policy), reports every attempt to health, and moves on —
up to `routing.max_attempts`, and only before anything has reached the client. A stream
is read until its first translated chunk before the caller commits a 200, so an upstream
that fails at once (including with an error event) is still retried. A context-length
error goes to the alias's `fallback_on_context_overflow` when it has one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog

from truckllm import errors
from truckllm.health import Attempt, HealthSettings, TargetId, key_ref
from truckllm.limits import Limiter, UpstreamUse, upstream_ref
from truckllm.policy import (
    ErrorClass,
    Outcome,
    backoff_s,
    classify_response,
    event_outcome,
    failure_reason,
    final_error,
    is_retryable,
    outcome_without_secret,
    passthrough_error,
    recovery_wait_budget_s,
    timed_out,
    transport_failed,
)
from truckllm.providers.base import (
    CallContext,
    Target,
    UpstreamResponse,
)
from truckllm.providers.media import PASS_THROUGH_OPERATIONS
from truckllm.providers.upstream_errors import WRONG_SHAPE, wrong_shape
from truckllm.records import Exchange, UpstreamFailure
from truckllm.relay import StreamRelay
from truckllm.router import (
    Candidate,
    CapacityWait,
    HasCapacity,
    RouteTarget,
    Routing,
    cursor_names,
    earliest_recovery_s,
    is_usable,
    next_candidate,
    plan,
)
from truckllm.state import CompiledProvider, Route, State, UpstreamKey
from truckllm.transport import Transport, TransportError

_NO_KEY = UpstreamKey("", "", 1.0)
_MIN_RECOVERY_PAUSE_S = 0.01
log = structlog.get_logger("truckllm.dispatch")


@dataclass(frozen=True, slots=True)
class Call:
    state: State
    op: str
    body: dict[str, Any]
    route: Route
    targets: tuple[Target, ...]
    ctx: CallContext
    limiter: Limiter | None = None     # upstream-key rpm/tpm accounting; None: not counted
    estimate_tokens: int = 0           # the prompt estimate reserved against upstream tpm


@dataclass(slots=True)
class Reply:
    body: bytes
    upstream_use: UpstreamUse | None = None     # settle with the real usage when done


def _nothing() -> None:
    return None


@dataclass(slots=True)
class RawReply:
    """A pass-through answer (audio, images): upstream status, type and bytes as they come."""

    status: int
    content_type: str
    body: AsyncGenerator[bytes, None]  # aclose() on abandon releases the upstream
    upstream_use: UpstreamUse | None = None     # settled when the body is done
    release: Callable[[], None] = _nothing      # idempotent: close upstream, end the attempt


@dataclass(slots=True)
class StreamReply:
    first: bytes                       # framed events ready before the 200 was committed
    rest: AsyncGenerator[bytes, None]  # framed events, ending with [DONE]; aclose() on abandon
    upstream_use: UpstreamUse | None = None     # settle with the real usage when it ends
    # Idempotent: close upstream, end the attempt. Call it after `rest.aclose()`, also when
    # the stream never started (closing an unstarted generator runs none of its code).
    release: Callable[[], None] = _nothing


class _AttemptFailed(Exception):
    """An attempt failed before anything reached the client."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class _ContextOverflow(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


Answer = Reply | StreamReply | RawReply


async def dispatch(call: Call, transport: Transport, exchange: Exchange,
                   routing: Routing) -> Answer:
    adopt(routing, call.state)
    route, targets = call.route, call.targets
    seen = {route.alias}
    while True:
        try:
            return await _serve_route(call, route, targets, transport, exchange, routing)
        except _ContextOverflow as overflow:
            fallback = route.config.fallback_on_context_overflow
            resolved = call.state.resolve(fallback) if fallback and fallback not in seen else None
            if fallback is None or resolved is None:
                raise passthrough_error(overflow.outcome) from None
            log.info("context_overflow_fallback", request_id=call.ctx.request_id,
                     alias=route.alias, fallback=fallback)
            seen.add(fallback)
            route, targets = resolved


def adopt(routing: Routing, state: State) -> None:
    """Bring runtime routing state in line with a newer config snapshot: new settings,
    ids that vanished forgotten, keys upstream rejected given another chance."""
    if state.version <= routing.adopted_version:
        return
    routing.adopted_version = state.version
    settings = state.config.routing
    routing.health.configure(HealthSettings(settings.cooldown_s, settings.breaker_failures,
                                            settings.breaker_window_s))
    refs = {key_ref(p.id, k.id) for p in state.providers.values() for k in p.keys}
    routing.health.prune(refs, set(state.providers))
    routing.cursors.prune(cursor_names([r.alias for r in state.all_routes], set(state.providers)))


async def _serve_route(call: Call, route: Route, targets: tuple[Target, ...],
                       transport: Transport, exchange: Exchange,
                       routing: Routing) -> Answer:
    settings = call.state.config.routing
    health = routing.health
    has_capacity, capacity_wait = _capacity_checks(call, routing)
    candidates, by_id = _candidates(call, route, targets, routing, has_capacity)
    if not candidates:
        raise errors.InvalidRequest(
            f"model {call.ctx.alias!r} cannot serve {call.op} requests", param="model")

    def usable(candidate: Candidate) -> bool:
        return is_usable(candidate, health, has_capacity)

    tried: list[Candidate] = []
    last: Outcome | None = None
    waited = 0.0
    while len(tried) < settings.max_attempts:
        candidate = next_candidate(candidates, tried, last.error_class if last else None, usable)
        if candidate is None:
            pause = _recovery_pause(candidates, routing, has_capacity, capacity_wait,
                                    len(tried), waited, settings.wait_for_recovery_ms)
            if pause is None:
                break
            await asyncio.sleep(pause)
            waited += pause
            continue
        if tried:
            same = candidate.target.target_id == tried[-1].target.target_id
            pause = backoff_s(len(tried) - 1, routing.rng, same_target=same)
            if pause:
                await asyncio.sleep(pause)
        tried.append(candidate)
        try:
            return await _attempt(call, candidate, by_id[candidate.target.target_id],
                                  transport, exchange, routing)
        except _AttemptFailed as failed:
            last = failed.outcome
        exchange.error_reason = last.error_class.value
        if last.error_class is ErrorClass.CONTEXT_OVERFLOW:
            raise _ContextOverflow(last)
        if not is_retryable(last, settings.retry_on):
            break
    raise final_error(last, earliest_recovery_s(candidates, health, has_capacity, capacity_wait))


def _capacity_checks(call: Call, routing: Routing) -> tuple[HasCapacity, CapacityWait | None]:
    """Whether an upstream key is below its own rpm/tpm for this request, and how long
    until it is: from the limiter when the call has one (and `routing.has_capacity`)."""
    limiter, extra = call.limiter, routing.has_capacity
    if limiter is None:
        return extra, None
    policy, estimate = call.state.limits, call.estimate_tokens

    def has_capacity(provider_id: str, key_id: str) -> bool:
        ref = upstream_ref(provider_id, key_id)
        return extra(provider_id, key_id) and limiter.upstream_has_capacity(policy, ref, estimate)

    def capacity_wait(provider_id: str, key_id: str) -> float | None:
        return limiter.upstream_wait_s(policy, upstream_ref(provider_id, key_id), estimate)

    return has_capacity, capacity_wait


def _recovery_pause(candidates: list[Candidate], routing: Routing, has_capacity: HasCapacity,
                    capacity_wait: CapacityWait | None, attempts_made: int, waited: float,
                    wait_for_recovery_ms: float) -> float | None:
    """How long to wait for a cooling candidate, or None to give up now."""
    wait = earliest_recovery_s(candidates, routing.health, has_capacity, capacity_wait)
    budget = recovery_wait_budget_s(attempts_made=attempts_made,
                                    wait_for_recovery_ms=wait_for_recovery_ms)
    if wait is None or waited + wait > budget:
        return None
    return max(wait, _MIN_RECOVERY_PAUSE_S)


def _candidates(call: Call, route: Route, targets: tuple[Target, ...], routing: Routing,
                has_capacity: HasCapacity) -> tuple[list[Candidate], dict[TargetId, Target]]:
    weights = route.config.targets
    route_targets: list[RouteTarget] = []
    by_id: dict[TargetId, Target] = {}
    for index, target in enumerate(targets):
        provider = call.state.providers[target.provider_id]
        if call.op not in provider.spec.operations:
            continue
        option = RouteTarget(target.provider_id, target.model, weights[index].weight, provider.keys)
        route_targets.append(option)
        by_id.setdefault(option.target_id, target)
    ordered = plan(route.alias, route.config.strategy, route_targets, routing.cursors,
                   routing.health, has_capacity)
    return ordered, by_id


async def _attempt(call: Call, candidate: Candidate, target: Target, transport: Transport,
                   exchange: Exchange, routing: Routing) -> Answer:
    provider = call.state.providers[target.provider_id]
    key = _key_named(provider, candidate.key_id)
    exchange.attempts += 1
    exchange.provider_id, exchange.upstream_model = provider.id, target.model
    exchange.upstream_key_id = key.id
    attempt = routing.health.begin(candidate.target.target_id, candidate.key_ref)
    use = _count_upstream(call, provider, key)
    try:
        reply: Answer
        if call.op in PASS_THROUGH_OPERATIONS:
            reply = await _open_raw(call, provider, target, key, transport, exchange, attempt)
        elif call.ctx.stream:
            reply = await _open_stream(call, provider, target, key, transport, exchange, attempt)
        else:
            reply = await _complete(call, provider, target, key, transport, exchange, attempt)
    except _AttemptFailed as failed:
        failed.outcome = outcome_without_secret(failed.outcome, key.value)
        attempt.failed(failed.outcome)
        attempt.end()
        _settle_unknown(use)
        exchange.upstream_failures.append(
            UpstreamFailure(provider.id, key.id, failure_reason(failed.outcome)))
        _log_failure(call, provider, key, target, failed.outcome)
        raise
    except BaseException:
        attempt.end()                   # cancelled (the client left) or a bug: free the slot
        _settle_unknown(use)
        raise
    reply.upstream_use = use
    return reply


def _count_upstream(call: Call, provider: CompiledProvider, key: UpstreamKey) -> UpstreamUse | None:
    if call.limiter is None or key is _NO_KEY:
        return None
    return call.limiter.upstream_acquire(call.state.limits, upstream_ref(provider.id, key.id),
                                         call.estimate_tokens)


def _settle_unknown(use: UpstreamUse | None) -> None:
    """A failed attempt reported no usage: its estimate stays counted against the key."""
    if use is not None:
        use.settle(None)


def _key_named(provider: CompiledProvider, key_id: str | None) -> UpstreamKey:
    for key in provider.keys:
        if key.id == key_id:
            return key
    return _NO_KEY


def _log_failure(call: Call, provider: CompiledProvider, key: UpstreamKey, target: Target,
                 outcome: Outcome) -> None:
    fields = {"request_id": call.ctx.request_id, "provider": provider.id, "key": key.id or None,
              "model": target.model, "error_class": outcome.error_class.value,
              "status": outcome.status, "detail": outcome.message}
    if outcome.error_class is ErrorClass.AUTH:
        log.error("upstream_key_rejected", action="key disabled until the next reload", **fields)
    else:
        log.warning("upstream_attempt_failed", **fields)


def _first_byte_deadline(provider: CompiledProvider) -> AbstractAsyncContextManager[object]:
    limit = provider.config.first_byte_timeout_s
    return nullcontext() if limit is None else asyncio.timeout(limit)


async def _send(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                transport: Transport) -> UpstreamResponse:
    request = provider.spec.build_request(call.op, call.body, target, key.value, call.ctx)
    try:
        return await transport.send(provider, target, request, call.ctx.request_id)
    except TransportError as exc:
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None


async def _complete(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange, attempt: Attempt) -> Reply:
    started = time.perf_counter()
    try:
        raw, response = await _fetch(call, provider, target, key, transport)
    finally:
        exchange.upstream_s += time.perf_counter() - started   # failed attempts wait too
    if response.status >= 400:
        raise _AttemptFailed(_status_outcome(provider, response, raw))
    attempt.succeeded(time.perf_counter() - started)
    try:
        parsed = provider.spec.parse_response(call.op, raw, target, call.ctx)
    except WRONG_SHAPE as exc:
        log.warning("upstream_body_unreadable", provider=target.provider_id, error=f"{type(exc).__name__}: {exc}")
        raise wrong_shape("a body") from None
    exchange.usage = parsed.usage
    attempt.end(parsed.usage.total_tokens if parsed.usage else 0)
    return Reply(parsed.body)


async def _fetch(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                 transport: Transport) -> tuple[bytes, UpstreamResponse]:
    """A plain upstream answer, read whole: (body, response)."""
    try:
        async with _first_byte_deadline(provider):
            response = await _send(call, provider, target, key, transport)
    except TimeoutError:
        raise _AttemptFailed(timed_out("no response before first_byte_timeout_s")) from None
    try:
        return await response.read(), response
    except TransportError as exc:
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
    finally:
        response.close()


async def _send_ok(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                   transport: Transport) -> UpstreamResponse:
    """A response whose body is still to be read; an error status is a failed attempt."""
    response = await _send(call, provider, target, key, transport)
    if response.status >= 400:
        raw = await _read_error_body(response)
        raise _AttemptFailed(_status_outcome(provider, response, raw))
    return response


async def _open_stream(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                       transport: Transport, exchange: Exchange, attempt: Attempt) -> StreamReply:
    started = time.perf_counter()
    relay: StreamRelay | None = None
    try:
        async with _first_byte_deadline(provider):
            response = await _send_ok(call, provider, target, key, transport)
            translator = provider.spec.new_stream_translator(call.op, target, call.ctx)
            relay = StreamRelay(response, translator, exchange, attempt, call.estimate_tokens,
                                key.value)
            first = await relay.first_output()
    except TimeoutError:
        _abandon(relay)
        raise _AttemptFailed(timed_out("no first token before first_byte_timeout_s")) from None
    except errors.GatewayError as exc:          # an error event before any output
        _abandon(relay)
        raise _AttemptFailed(event_outcome(exc, now_unix=time.time())) from None
    except TransportError as exc:
        _abandon(relay)
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
    finally:
        exchange.upstream_s += time.perf_counter() - started
    attempt.succeeded(time.perf_counter() - started)
    return StreamReply(first, relay.rest(), release=relay.abandon)


async def _open_raw(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange, attempt: Attempt) -> RawReply:
    started = time.perf_counter()
    try:
        async with _first_byte_deadline(provider):
            response = await _send_ok(call, provider, target, key, transport)
    except TimeoutError:
        raise _AttemptFailed(timed_out("no response before first_byte_timeout_s")) from None
    finally:
        exchange.upstream_s += time.perf_counter() - started
    attempt.succeeded(time.perf_counter() - started)
    content_type = response.headers.get("Content-Type", "application/octet-stream")

    def release() -> None:
        response.close()
        attempt.end()

    def failed(exc: TransportError) -> None:
        """The body broke off after the status line: too late to retry, but it counts."""
        outcome = transport_failed(exc.kind, str(exc))
        attempt.failed(outcome)
        exchange.upstream_failures.append(
            UpstreamFailure(provider.id, key.id, failure_reason(outcome)))

    return RawReply(response.status, content_type, _raw_body(response, release, failed),
                    release=release)


async def _raw_body(response: UpstreamResponse, release: Callable[[], None],
                    failed: Callable[[TransportError], None]) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.iter_chunks():
            yield chunk
    except TransportError as exc:
        failed(exc)
        raise
    finally:
        release()


async def _read_error_body(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except TransportError as exc:
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
    finally:
        response.close()


def _abandon(relay: StreamRelay | None) -> None:
    if relay is not None:
        relay.close_upstream()


def _status_outcome(provider: CompiledProvider, response: UpstreamResponse, raw: bytes) -> Outcome:
    info = provider.spec.parse_error(response.status, raw)
    return classify_response(response.status, response.headers, info, now_unix=time.time())
