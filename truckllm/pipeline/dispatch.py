"""The only module that combines translation and transport for one client request.

It asks the router for candidates (targets in strategy order, each with its keys), and
tries them in turn: builds the upstream request with the provider's spec, sends it,
classifies a failure (truckllm.pipeline.retry), reports every attempt to health, and moves on —
up to `routing.max_attempts`, and only before anything has reached the client. A stream
is read until its first translated chunk before the caller commits a 200, so an upstream
that fails at once (including with an error event) is still retried. A context-length
error goes to the alias's `fallback_on_context_overflow` when it has one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog

from truckllm import errors
from truckllm.limits import NO_PROMPT, Limiter, PromptEstimate, UpstreamUse, upstream_ref
from truckllm.pipeline.health import Attempt, Health, HealthSettings
from truckllm.pipeline.record import Exchange, TraceHook, UpstreamFailure
from truckllm.pipeline.retry import (
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
from truckllm.pipeline.router import (
    Candidate,
    CapacityWait,
    HasCapacity,
    Routing,
    always_has_capacity,
    cursor_names,
    earliest_recovery_s,
    next_candidate,
    plan,
    usability,
)
from truckllm.pipeline.stream import StreamRelay
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import (
    CallContext,
    Target,
    UpstreamRequest,
    UpstreamResponse,
)
from truckllm.providers.shared.media import PASS_THROUGH_OPERATIONS
from truckllm.providers.shared.upstream_errors import WRONG_SHAPE, wrong_shape
from truckllm.runtime.state import (
    CompiledProvider,
    Route,
    RouteChoices,
    State,
    UpstreamKey,
    route_choices,
)

_NO_KEY = UpstreamKey("", "", 1.0)
_NO_CHOICES = RouteChoices((), {}, ())
_MIN_RECOVERY_PAUSE_S = 0.01
log = structlog.get_logger("truckllm.pipeline.dispatch")


class Call(NamedTuple):
    """One client request as dispatch receives it. Immutable; a NamedTuple rather than a
    frozen dataclass because one is built per request, and a frozen dataclass's __init__
    pays an object.__setattr__ call per field."""

    state: State
    op: str
    body: dict[str, Any]
    route: Route
    targets: tuple[Target, ...]
    ctx: CallContext
    limiter: Limiter | None = None     # upstream-key rpm/tpm accounting; None: not counted
    estimate: PromptEstimate = NO_PROMPT   # the prompt estimate, reserved against upstream tpm


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


Answer = Reply | StreamReply | RawReply


def dispatch(call: Call, transport: Transport, exchange: Exchange,
             routing: Routing) -> Coroutine[Any, Any, Answer]:
    """The answer to one call (await it). A plain function handing back the attempt loop's
    coroutine, so that the loop is the only dispatch layer every resume passes through."""
    if call.state.version > routing.adopted_version:    # a newer snapshot: rarely
        adopt(routing, call.state)
    return _serve_route(call, call.route, call.targets, transport, exchange, routing,
                        (call.route.alias,))


def adopt(routing: Routing, state: State) -> None:
    """Bring runtime routing state in line with a newer config snapshot: new settings,
    ids that vanished forgotten, keys upstream rejected given another chance."""
    if state.version <= routing.adopted_version:
        return
    routing.adopted_version = state.version
    settings = state.config.routing
    routing.health.configure(HealthSettings(settings.cooldown_s, settings.breaker_failures,
                                            settings.breaker_window_s))
    refs = {upstream_ref(p.id, k.id) for p in state.providers.values() for k in p.keys}
    routing.health.prune(refs, set(state.providers))
    routing.cursors.prune(cursor_names([r.alias for r in state.all_routes], set(state.providers)))


async def _serve_route(call: Call, route: Route, targets: tuple[Target, ...],
                       transport: Transport, exchange: Exchange, routing: Routing,
                       seen: tuple[str, ...]) -> Answer:
    """Attempts over the route's candidates; `seen`: the aliases this call has tried."""
    state = call.state
    settings = state.config.routing
    has_capacity: HasCapacity = always_has_capacity
    capacity_wait: CapacityWait | None = None
    if call.limiter is not None and state.limits.limits_upstream:   # some key has rpm/tpm
        has_capacity, capacity_wait = _capacity_checks(call)
    choices = (route.choices.get(call.op, _NO_CHOICES) if targets is route.targets
               else route_choices(route.config, targets, state.providers, call.op))
    candidates: Sequence[Candidate] | None = choices.fixed
    if candidates is None:      # the order depends on cursors or health: planned now
        candidates = plan(route.alias, route.config.strategy, choices.targets, routing.cursors,
                          routing.health, has_capacity)
    if not candidates:
        raise errors.InvalidRequest(
            f"model {call.ctx.alias!r} cannot serve {call.op} requests", param="model")
    opener = _OPENERS[call.op in PASS_THROUGH_OPERATIONS, call.ctx.stream]
    health = routing.health
    usable = routing.usable if has_capacity is always_has_capacity else usability(health, has_capacity)
    tried: list[Candidate] = []
    last: Outcome | None = None
    waited = 0.0
    refusals = 0
    while len(tried) < settings.max_attempts:
        candidate = next_candidate(candidates, tried, last.error_class if last else None, usable)
        if candidate is None or tried:      # nothing usable yet, or a retry: pause first
            paused = time.perf_counter()
            candidate, waited = await _after_pause(candidate, candidates, tried, last, waited,
                                                   routing, usable, has_capacity, capacity_wait,
                                                   settings.wait_for_recovery_ms)
            # Backing off or waiting for an upstream to recover is not TruckLLM's own time
            # (x-truckllm-overhead-ms): it counts with the time spent on upstream.
            exchange.upstream_s += time.perf_counter() - paused
            if candidate is None:
                break
        limiter = call.limiter
        use = None
        if limiter is not None and candidate.key_ref is not None:
            use = await limiter.upstream_acquire(state.limits, candidate.key_ref, call.estimate)
            if use is None:
                # A shared limit store found the key's rpm/tpm used up by another instance
                # since the router asked: not an attempt; the key is now known to be full.
                refusals += 1
                if refusals > len(candidates):
                    break
                continue
        tried.append(candidate)
        # The attempt is awaited here, not in a helper coroutine: every coroutine layer
        # between the handler and aiohttp is paid again on each resume.
        target, provider, key, attempt = _begin(call, choices, candidate, exchange, health)
        try:
            reply = await opener(call, provider, target, key, transport, exchange, attempt)
        except _AttemptFailed as failed:
            last = _attempt_failed(call, provider, target, key, attempt, exchange, failed.outcome)
            await _settle_unknown(use)
        except BaseException:
            attempt.end()                   # cancelled (the client left) or a bug: free the slot
            await _settle_unknown(use)
            raise
        else:
            reply.upstream_use = use
            return reply
        exchange.error_reason = last.error_class.value
        if last.error_class is ErrorClass.CONTEXT_OVERFLOW:
            return await _fall_back(call, route, last, transport, exchange, routing, seen)
        if not is_retryable(last, settings.retry_on):
            break
    recovery_s = earliest_recovery_s(candidates, routing.health, has_capacity, capacity_wait)
    cause = None if last is not None else routing.health.last_failure(
        (c.target.target_id, c.key_ref) for c in candidates)
    raise final_error(last, recovery_s, cause)


def _fall_back(call: Call, route: Route, overflow: Outcome, transport: Transport,
               exchange: Exchange, routing: Routing,
               seen: tuple[str, ...]) -> Coroutine[Any, Any, Answer]:
    """A prompt too long for this route goes to its `fallback_on_context_overflow` alias
    (once per alias); without one, the client gets the upstream's error."""
    fallback = route.config.fallback_on_context_overflow
    resolved = call.state.resolve(fallback) if fallback and fallback not in seen else None
    if fallback is None or resolved is None:
        raise passthrough_error(overflow)
    log.info("context_overflow_fallback", request_id=call.ctx.request_id,
             alias=route.alias, fallback=fallback)
    fallback_route, targets = resolved
    return _serve_route(call, fallback_route, targets, transport, exchange, routing,
                        (*seen, fallback))


async def _after_pause(candidate: Candidate | None, candidates: Sequence[Candidate],
                       tried: list[Candidate], last: Outcome | None, waited: float,
                       routing: Routing, usable: Callable[[Candidate], bool],
                       has_capacity: HasCapacity, capacity_wait: CapacityWait | None,
                       wait_for_recovery_ms: float) -> tuple[Candidate | None, float]:
    """The candidate for the next attempt after waiting for one to recover (when
    `candidate`, the one usable now, is None) or backing off before a retry (None when
    there is none to try), and the time this request has now waited for recovery in all.
    Not awaited for a first attempt with a usable candidate: nothing to wait for."""
    while candidate is None:
        pause = _recovery_pause(candidates, routing, has_capacity, capacity_wait,
                                len(tried), waited, wait_for_recovery_ms)
        if pause is None:
            return None, waited
        await asyncio.sleep(pause)
        waited += pause
        candidate = next_candidate(candidates, tried, last.error_class if last else None, usable)
    if tried:
        same = candidate.target.target_id == tried[-1].target.target_id
        pause = backoff_s(len(tried) - 1, routing.rng, same_target=same)
        if pause:
            await asyncio.sleep(pause)
    return candidate, waited


def _capacity_checks(call: Call) -> tuple[HasCapacity, CapacityWait | None]:
    """Whether an upstream key is below its own rpm/tpm for this request, and how long
    until it is: from the call's limiter, for a snapshot in which some upstream key has an
    rpm or tpm."""
    limiter = call.limiter
    assert limiter is not None
    policy, estimate = call.state.limits, call.estimate

    def has_capacity(provider_id: str, key_id: str) -> bool:
        ref = upstream_ref(provider_id, key_id)
        return limiter.upstream_has_capacity(policy, ref, estimate)

    def capacity_wait(provider_id: str, key_id: str) -> float | None:
        return limiter.upstream_wait_s(policy, upstream_ref(provider_id, key_id), estimate)

    return has_capacity, capacity_wait


def _recovery_pause(candidates: Sequence[Candidate], routing: Routing, has_capacity: HasCapacity,
                    capacity_wait: CapacityWait | None, attempts_made: int, waited: float,
                    wait_for_recovery_ms: float) -> float | None:
    """How long to wait for a cooling candidate, or None to give up now."""
    wait = earliest_recovery_s(candidates, routing.health, has_capacity, capacity_wait)
    budget = recovery_wait_budget_s(attempts_made=attempts_made,
                                    wait_for_recovery_ms=wait_for_recovery_ms)
    if wait is None or waited + wait > budget:
        return None
    return max(wait, _MIN_RECOVERY_PAUSE_S)


_Opener = Callable[[Call, CompiledProvider, Target, UpstreamKey, Transport, Exchange, Attempt],
                   Awaitable[Answer]]


def _begin(call: Call, choices: RouteChoices, candidate: Candidate, exchange: Exchange,
           health: Health) -> tuple[Target, CompiledProvider, UpstreamKey, Attempt]:
    """An attempt starts: what the candidate stands for, and the request and health know
    it."""
    target_id = candidate.target.target_id
    target = choices.by_id[target_id]
    state = call.state
    provider = state.providers[target.provider_id]
    key_id = candidate.key_id
    key = _NO_KEY if key_id is None else provider.keys_by_id.get(key_id, _NO_KEY)
    exchange.attempts += 1
    exchange.provider_id, exchange.upstream_model = provider.id, target.model
    exchange.upstream_key_id = key.id
    if exchange.trace is not None:
        exchange.trace.attempt_began(call.op, provider.id, provider.config.type, target.model,
                                     key.id)
    attempt = health.begin(target_id, candidate.key_ref)
    return target, provider, key, attempt


def _attempt_failed(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    attempt: Attempt, exchange: Exchange, outcome: Outcome) -> Outcome:
    """An attempt failed before anything reached the client: health, the request's list of
    failures and the log learn it. Returns it without the key."""
    outcome = outcome_without_secret(outcome, key.value)
    attempt.failed(outcome)
    attempt.end()
    reason = failure_reason(outcome)
    exchange.upstream_failures.append(UpstreamFailure(provider.id, key.id, reason))
    if exchange.trace is not None:
        exchange.trace.attempt_failed(reason)
    _log_failure(call, provider, key, target, outcome)
    return outcome


async def _settle_unknown(use: UpstreamUse | None) -> None:
    """A failed attempt reported no usage: its estimate stays counted against the key."""
    if use is not None:
        await use.settle(None)


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


async def _complete(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange, attempt: Attempt) -> Reply:
    """A plain upstream answer, read whole and translated."""
    op, ctx = call.op, call.ctx             # (a NamedTuple's fields cost a lookup per read)
    spec = provider.spec_by_op[op]
    request = spec.build_request(op, call.body, target, key.value, ctx)
    if exchange.trace is not None:
        _traced(request, exchange.trace)
    limit = provider.config.first_byte_timeout_s
    started = time.perf_counter()
    try:
        if limit is None:       # no deadline: no (even empty) context manager to enter
            status, headers, raw = await transport.fetch(provider, target, request, ctx.request_id)
        else:
            async with asyncio.timeout(limit):
                status, headers, raw = await transport.fetch(provider, target, request,
                                                             ctx.request_id)
    except TimeoutError:
        raise _AttemptFailed(timed_out("no response before first_byte_timeout_s")) from None
    except TransportError as exc:
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
    finally:
        waited = time.perf_counter() - started
        exchange.upstream_s += waited           # failed attempts wait too
    if status >= 400:
        raise _AttemptFailed(_status_outcome(provider, status, headers, raw))
    attempt.succeeded(waited)
    try:
        parsed = spec.parse_response(op, raw, target, ctx)
    except WRONG_SHAPE as exc:
        log.warning("upstream_body_unreadable", provider=target.provider_id, error=f"{type(exc).__name__}: {exc}")
        raise wrong_shape("a body") from None
    usage = exchange.usage = parsed.usage
    attempt.end(usage.total_tokens if usage else 0)
    return Reply(parsed.body)


def _traced(request: UpstreamRequest, trace: TraceHook) -> None:
    """The attempt's trace context goes upstream with it (W3C traceparent)."""
    request.headers = {**request.headers, **trace.upstream_headers()}


async def _send_ok(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                   transport: Transport, exchange: Exchange) -> UpstreamResponse:
    """A response whose body is still to be read; an error status is a failed attempt."""
    request = provider.spec_by_op[call.op].build_request(call.op, call.body, target, key.value,
                                                         call.ctx)
    if exchange.trace is not None:
        _traced(request, exchange.trace)
    try:
        response = await transport.send(provider, target, request, call.ctx.request_id)
    except TransportError as exc:
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
    if response.status >= 400:
        raw = await _read_error_body(response)
        raise _AttemptFailed(_status_outcome(provider, response.status, response.headers, raw))
    return response


async def _open_stream(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                       transport: Transport, exchange: Exchange, attempt: Attempt) -> StreamReply:
    started = time.perf_counter()
    response: UpstreamResponse | None = None
    # Read before the request is sent: nothing that fails after it may leave it running.
    prompt_tokens = call.estimate.tokens
    try:
        async with _first_byte_deadline(provider):
            response = await _send_ok(call, provider, target, key, transport, exchange)
            translator = provider.spec_by_op[call.op].new_stream_translator(call.op, target, call.ctx)
            relay = StreamRelay(response, translator, exchange, attempt, prompt_tokens,
                                key.value, int(provider.config.max_event_mb * 1024 * 1024))
            first = await relay.first_output()
    except TimeoutError:
        _abandon(response)
        raise _AttemptFailed(timed_out("no first token before first_byte_timeout_s")) from None
    except errors.GatewayError as exc:          # an error event before any output
        _abandon(response)
        raise _AttemptFailed(event_outcome(exc, now_unix=time.time())) from None
    except TransportError as exc:
        _abandon(response)
        raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
    except BaseException:                       # the client left, or a bug: close upstream
        _abandon(response)
        raise
    finally:
        waited = time.perf_counter() - started
        exchange.upstream_s += waited
    attempt.succeeded(waited)
    return StreamReply(first, relay.rest(), release=relay.abandon)


async def _open_raw(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange, attempt: Attempt) -> RawReply:
    started = time.perf_counter()
    try:
        async with _first_byte_deadline(provider):
            response = await _send_ok(call, provider, target, key, transport, exchange)
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


def _abandon(response: UpstreamResponse | None) -> None:
    if response is not None:
        response.close()


def _status_outcome(provider: CompiledProvider, status: int, headers: Mapping[str, str],
                    raw: bytes) -> Outcome:
    info = provider.spec.parse_error(status, raw)
    return classify_response(status, headers, info, now_unix=time.time())


# How an attempt of a request is made, by (passed through, streamed): read whole,
# streamed, or passed through (audio, images) whatever the stream flag says.
_OPENERS: dict[tuple[bool, bool], _Opener] = {
    (False, False): _complete, (False, True): _open_stream,
    (True, False): _open_raw, (True, True): _open_raw,
}
