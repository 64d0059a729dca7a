"""The only module that combines translation and transport for one client request.

It asks the router for candidates (targets in strategy order, each with its keys), and
tries them in turn: builds the upstream request with the provider's OperationSpec, sends
it, classifies a failure (truckllm.pipeline.retry), reports every attempt to health, and
moves on — up to `routing.max_attempts`, and only before anything has reached the client.
A stream is read until its first translated event before the caller commits a 200, so an
upstream that fails at once (including with an error event) is still retried. A
context-length error goes to the alias's `fallback_on_context_overflow` when it has one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog

from truckllm import errors
from truckllm.limits import NO_PROMPT, Limiter, PromptEstimate, UpstreamUse, upstream_ref
from truckllm.pipeline.health import Attempt, HealthSettings
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
from truckllm.pipeline.stream import DirectWriter, StreamRelay, Writer
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import (
    CallContext,
    Operation,
    OperationSpec,
    Target,
    UpstreamKey,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTransport,
)
from truckllm.providers.shared.upstream_errors import WRONG_SHAPE, wrong_shape
from truckllm.runtime.state import (
    CompiledProvider,
    Route,
    RouteChoices,
    State,
    route_choices,
)

_NO_KEY = UpstreamKey("", "")
_NO_CHOICES = RouteChoices((), {}, ())
_MIN_RECOVERY_PAUSE_S = 0.01
log = structlog.get_logger("truckllm.pipeline.dispatch")


@dataclass(slots=True)          # per request, read-only by convention (see CallContext)
class Call:
    """One client request as dispatch receives it."""

    state: State
    op: Operation
    body: dict[str, Any]
    route: Route
    targets: tuple[Target, ...]
    ctx: CallContext
    limiter: Limiter | None = None     # upstream-key rpm/tpm accounting; None: not counted
    estimate: PromptEstimate = NO_PROMPT   # the prompt estimate, reserved against upstream tpm
    # (provider id, upstream key id) tried first when it is a candidate: a follow-up of a
    # Responses API answer goes back to the upstream account that holds it.
    prefer: tuple[str, str] | None = None


def _preferred_first(candidates: Sequence[Candidate], prefer: tuple[str, str]) -> Sequence[Candidate]:
    """`candidates` with the one of the preferred provider and key first, the order
    otherwise kept; unchanged when it is not among them."""
    first = [c for c in candidates if (c.target.provider_id, c.key_id) == prefer]
    return [*first, *(c for c in candidates if c not in first)] if first else candidates


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
    # Writes the rest of the stream with the writers it is given (StreamRelay.write_rest),
    # and returns the stream's last bytes, to send with the end of the response.
    write_rest: Callable[[Writer, DirectWriter | None], Awaitable[bytes]]
    upstream_use: UpstreamUse | None = None     # settle with the real usage when it ends
    # Idempotent: close upstream, end the attempt. Call it when the stream is over,
    # also when it never started (the client left first).
    release: Callable[[], None] = _nothing


Answer = Reply | StreamReply | RawReply


class _AttemptFailed(Exception):
    """An attempt failed before anything reached the client."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def dispatch(call: Call, transport: Transport, exchange: Exchange,
             routing: Routing) -> Awaitable[Answer]:
    """The answer to one call (await it). Hands back the attempts' coroutine rather than
    awaiting it, so that the attempt loop is the one dispatch frame that every resume of
    the request (each upstream read) passes through."""
    if call.state.version > routing.adopted_version:    # a newer snapshot: rarely
        adopt(routing, call.state)
    return _Attempts(call, transport, exchange, routing).serve(call.route, call.targets)


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


@dataclass(slots=True)
class _Upstream:
    """What one attempt goes to, and its bookkeeping until it ends."""

    target: Target
    provider: CompiledProvider
    key: UpstreamKey
    spec: OperationSpec
    transport: UpstreamTransport
    attempt: Attempt                   # health's view of it


class _Attempts:
    """One request's attempts over a route's candidates (and its fallback's): which to try
    next, when to pause, what a failure means, and how each kind of answer is opened."""

    __slots__ = ("call", "candidates", "capacity_wait", "exchange", "has_capacity", "last",
                 "network", "routing", "seen", "tried", "usable", "waited")

    def __init__(self, call: Call, network: Transport, exchange: Exchange,
                 routing: Routing) -> None:
        self.call = call
        self.network = network
        self.exchange = exchange
        self.routing = routing
        self.seen: tuple[str, ...] = (call.route.alias,)     # the aliases tried so far
        self.candidates: Sequence[Candidate] = ()
        self.tried: list[Candidate] = []
        self.last: Outcome | None = None
        self.waited = 0.0               # seconds spent waiting for a candidate to recover
        self.has_capacity: HasCapacity = always_has_capacity
        self.capacity_wait: CapacityWait | None = None
        self.usable: Callable[[Candidate], bool] = routing.usable

    async def serve(self, route: Route, targets: tuple[Target, ...]) -> Answer:
        """Attempts over the route's candidates, until one answers."""
        call, routing = self.call, self.routing
        state = call.state
        settings = state.config.routing
        if call.limiter is not None and state.limits.limits_upstream:
            self._check_capacity(call.limiter)      # some upstream key has an rpm or tpm
        choices = (route.choices.get(call.op, _NO_CHOICES) if targets is route.targets
                   else route_choices(route.config, targets, state.providers, call.op))
        candidates: Sequence[Candidate] | None = choices.fixed
        if candidates is None:      # the order depends on cursors or health: planned now
            candidates = plan(route.alias, route.config.strategy, choices.targets, routing.cursors,
                              routing.health, self.has_capacity)
        if not candidates:
            raise errors.InvalidRequest(
                f"model {call.ctx.alias!r} cannot serve {call.op} requests", param="model")
        if call.prefer is not None:
            candidates = _preferred_first(candidates, call.prefer)
        self.candidates, self.tried, self.last, self.waited = candidates, [], None, 0.0
        refusals = 0
        while len(self.tried) < settings.max_attempts:
            last_error: ErrorClass | None = None if self.last is None else self.last.error_class
            candidate = next_candidate(candidates, self.tried, last_error, self.usable)
            if candidate is None or self.tried:     # nothing usable yet, or a retry: pause first
                paused = time.perf_counter()
                candidate = await self._after_pause(candidate, settings.wait_for_recovery_ms)
                # Backing off or waiting for an upstream to recover is not TruckLLM's own
                # time (x-truckllm-overhead-ms): it counts with the time spent on upstream.
                self.exchange.upstream_s += time.perf_counter() - paused
                if candidate is None:
                    break
            attempt = routing.health.begin(candidate.target.target_id, candidate.key_ref)
            if attempt.on_trial and not await attempt.confirm_trials():
                # A shared store found the half-open breaker's one trial taken by another
                # instance since the router asked: not an attempt, as below.
                refusals += 1
                if refusals > len(candidates):
                    break
                continue
            limiter = call.limiter
            use = None
            if limiter is not None and candidate.key_ref is not None:
                try:
                    # Most keys have no rpm/tpm: counted without a store operation to await.
                    use = (limiter.upstream_count(state.limits, candidate.key_ref)
                           or await limiter.upstream_acquire(state.limits, candidate.key_ref,
                                                             call.estimate))
                except BaseException:
                    attempt.withdraw()
                    raise
                if use is None:
                    # A shared limit store found the key's rpm/tpm used up by another
                    # instance since the router asked: not an attempt; the key is now
                    # known to be full, so the next pass looks elsewhere or waits.
                    attempt.withdraw()
                    refusals += 1
                    if refusals > len(candidates):
                        break
                    continue
            self.tried.append(candidate)
            upstream = self._begin(choices, candidate, attempt)
            try:
                # Opened the way the operation answers: relayed raw (audio, images),
                # streamed, or read whole.
                reply: Answer
                if upstream.spec.raw:
                    reply = await self._open_raw(upstream)
                elif call.ctx.stream:
                    reply = await self._open_stream(upstream)
                else:
                    reply = await self._complete(upstream)
            except _AttemptFailed as failed:
                self.last = last = self._failed(upstream, failed.outcome)
                await _settle_unknown(use)
            except BaseException:
                upstream.attempt.end()      # cancelled (the client left) or a bug: free the slot
                await _settle_unknown(use)
                raise
            else:
                reply.upstream_use = use
                return reply
            self.exchange.error_reason = last.error_class.value
            if last.error_class is ErrorClass.CONTEXT_OVERFLOW:
                return await self._fall_back(route, last)
            if not is_retryable(last, settings.retry_on):
                break
        recovery_s = earliest_recovery_s(candidates, routing.health, self.has_capacity,
                                         self.capacity_wait)
        cause = None if self.last is not None else routing.health.last_failure(
            (c.target.target_id, c.key_ref) for c in candidates)
        raise final_error(self.last, recovery_s, cause)

    async def _fall_back(self, route: Route, overflow: Outcome) -> Answer:
        """A prompt too long for this route goes to its `fallback_on_context_overflow` alias
        (once per alias); without one, the client gets the upstream's error."""
        fallback = route.config.fallback_on_context_overflow
        resolved = (self.call.state.resolve(fallback)
                    if fallback and fallback not in self.seen else None)
        if fallback is None or resolved is None:
            raise passthrough_error(overflow)
        log.info("context_overflow_fallback", request_id=self.call.ctx.request_id,
                 alias=route.alias, fallback=fallback)
        self.seen = (*self.seen, fallback)
        fallback_route, targets = resolved
        return await self.serve(fallback_route, targets)

    async def _after_pause(self, candidate: Candidate | None,
                           wait_for_recovery_ms: float) -> Candidate | None:
        """The candidate for the next attempt after waiting for one to recover (when
        `candidate`, the one usable now, is None) or backing off before a retry; None when
        there is none to try."""
        while candidate is None:
            pause = self._recovery_pause(wait_for_recovery_ms)
            if pause is None:
                return None
            await asyncio.sleep(pause)
            self.waited += pause
            last_error: ErrorClass | None = None if self.last is None else self.last.error_class
            candidate = next_candidate(self.candidates, self.tried, last_error, self.usable)
        tried = self.tried
        if tried:
            same = candidate.target.target_id == tried[-1].target.target_id
            pause = backoff_s(len(tried) - 1, self.routing.rng, same_target=same)
            if pause:
                await asyncio.sleep(pause)
        return candidate

    def _recovery_pause(self, wait_for_recovery_ms: float) -> float | None:
        """How long to wait for a cooling candidate, or None to give up now."""
        wait = earliest_recovery_s(self.candidates, self.routing.health, self.has_capacity,
                                   self.capacity_wait)
        budget = recovery_wait_budget_s(attempts_made=len(self.tried),
                                        wait_for_recovery_ms=wait_for_recovery_ms)
        if wait is None or self.waited + wait > budget:
            return None
        return max(wait, _MIN_RECOVERY_PAUSE_S)

    def _check_capacity(self, limiter: Limiter) -> None:
        """Candidates count as usable only while their upstream key is below its own
        rpm/tpm for this request; `capacity_wait` says how long until it is."""
        policy, estimate = self.call.state.limits, self.call.estimate

        def has_capacity(provider_id: str, key_id: str) -> bool:
            return limiter.upstream_has_capacity(policy, upstream_ref(provider_id, key_id), estimate)

        def capacity_wait(provider_id: str, key_id: str) -> float | None:
            return limiter.upstream_wait_s(policy, upstream_ref(provider_id, key_id), estimate)

        self.has_capacity, self.capacity_wait = has_capacity, capacity_wait
        self.usable = usability(self.routing.health, has_capacity)

    def _begin(self, choices: RouteChoices, candidate: Candidate, attempt: Attempt) -> _Upstream:
        """An attempt starts: what the candidate stands for, and the request knows it
        (health knew it first: `attempt`)."""
        call, exchange = self.call, self.exchange
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
        spec = provider.spec
        return _Upstream(target, provider, key, spec.operations[call.op],
                         spec.transport or self.network, attempt)

    def _failed(self, upstream: _Upstream, outcome: Outcome) -> Outcome:
        """An attempt failed before anything reached the client: health, the key's
        counters, the request's list of failures and the log learn it. Returns it without
        the key."""
        key = upstream.key
        outcome = outcome_without_secret(outcome, key.value)
        upstream.attempt.failed(outcome)
        upstream.attempt.end()
        reason = failure_reason(outcome)
        self.exchange.add_failure(UpstreamFailure(upstream.provider.id, key.id, reason))
        if self.exchange.trace is not None:
            self.exchange.trace.attempt_failed(reason)
        _log_failure(self.call, upstream, outcome)
        return outcome

    async def _complete(self, upstream: _Upstream) -> Reply:
        """A plain upstream answer, read whole and translated."""
        call, exchange, target, spec = self.call, self.exchange, upstream.target, upstream.spec
        ctx = call.ctx
        request = spec.build_request(call.body, target, upstream.key, ctx)
        exchange.dropped_tools = request.dropped_tools
        if exchange.trace is not None:
            _traced(request, exchange.trace)
        answer = upstream.transport.fetch(upstream.provider, target, request, ctx.request_id)
        limit = upstream.provider.config.first_byte_timeout_s
        started = time.perf_counter()
        try:
            if limit is None:
                status, headers, raw = await answer
            else:
                async with asyncio.timeout(limit):
                    status, headers, raw = await answer
        except TimeoutError:
            raise _AttemptFailed(timed_out("no response before first_byte_timeout_s")) from None
        except TransportError as exc:
            raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
        finally:
            waited = time.perf_counter() - started
            exchange.upstream_s += waited           # failed attempts wait too
        if status >= 400:
            raise _AttemptFailed(_status_outcome(upstream.provider, status, headers, raw))
        assert spec.parse_response is not None
        try:
            parsed = spec.parse_response(raw, target, ctx)
        except errors.GatewayError as exc:      # a 200 that is not an answer
            log.warning("upstream_body_unreadable", provider=target.provider_id, error=exc.message)
            raise _AttemptFailed(event_outcome(exc, now_unix=time.time())) from None
        except WRONG_SHAPE as exc:
            log.warning("upstream_body_unreadable", provider=target.provider_id,
                        error=f"{type(exc).__name__}: {exc}")
            raise _AttemptFailed(event_outcome(wrong_shape("a body"), now_unix=time.time())) from None
        upstream.attempt.succeeded(waited)
        usage = exchange.usage = parsed.usage
        upstream.attempt.end(usage.total_tokens if usage else 0)
        return Reply(parsed.body)

    async def _send_ok(self, upstream: _Upstream) -> UpstreamResponse:
        """A response whose body is still to be read; an error status is a failed attempt."""
        call = self.call
        request = upstream.spec.build_request(call.body, upstream.target, upstream.key, call.ctx)
        self.exchange.dropped_tools = request.dropped_tools
        if self.exchange.trace is not None:
            _traced(request, self.exchange.trace)
        try:
            response = await upstream.transport.send(upstream.provider, upstream.target, request,
                                                     call.ctx.request_id)
        except TransportError as exc:
            raise _AttemptFailed(transport_failed(exc.kind, str(exc))) from None
        if response.status >= 400:
            raw = await _read_error_body(response)
            raise _AttemptFailed(_status_outcome(upstream.provider, response.status,
                                                 response.headers, raw))
        return response

    async def _open_stream(self, upstream: _Upstream) -> StreamReply:
        call, exchange, spec, provider = self.call, self.exchange, upstream.spec, upstream.provider
        started = time.perf_counter()
        response: UpstreamResponse | None = None
        # Read before the request is sent: nothing that fails after it may leave it running.
        prompt_tokens = call.estimate.tokens
        try:
            async with _first_byte_deadline(provider):
                response = await self._send_ok(upstream)
                assert spec.new_stream_translator is not None
                translator = spec.new_stream_translator(upstream.target, call.ctx)
                relay = StreamRelay(response, translator, spec.stream_ending, exchange,
                                    upstream.attempt, prompt_tokens, upstream.key.value,
                                    int(provider.config.max_event_mb * 1024 * 1024))
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
        upstream.attempt.succeeded(waited)
        return StreamReply(first, relay.write_rest, release=relay.abandon)

    async def _open_raw(self, upstream: _Upstream) -> RawReply:
        exchange, attempt = self.exchange, upstream.attempt
        started = time.perf_counter()
        try:
            async with _first_byte_deadline(upstream.provider):
                response = await self._send_ok(upstream)
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
            exchange.add_failure(
                UpstreamFailure(upstream.provider.id, upstream.key.id, failure_reason(outcome)))

        return RawReply(response.status, content_type, _raw_body(response, release, failed),
                        release=release)


async def _settle_unknown(use: UpstreamUse | None) -> None:
    """A failed attempt reported no usage: its estimate stays counted against the key."""
    if use is not None:
        await use.settle(None)


def _log_failure(call: Call, upstream: _Upstream, outcome: Outcome) -> None:
    fields = {"request_id": call.ctx.request_id, "provider": upstream.provider.id,
              "key": upstream.key.id or None, "model": upstream.target.model,
              "error_class": outcome.error_class.value, "status": outcome.status,
              "detail": outcome.message}
    if outcome.error_class is ErrorClass.AUTH:
        log.error("upstream_key_rejected", action="key disabled until the next reload", **fields)
    else:
        log.warning("upstream_attempt_failed", **fields)


def _traced(request: UpstreamRequest, trace: TraceHook) -> None:
    """The attempt's trace context goes upstream with it (W3C traceparent)."""
    request.headers = {**request.headers, **trace.upstream_headers()}


def _first_byte_deadline(provider: CompiledProvider) -> AbstractAsyncContextManager[object]:
    limit = provider.config.first_byte_timeout_s
    return nullcontext() if limit is None else asyncio.timeout(limit)


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
