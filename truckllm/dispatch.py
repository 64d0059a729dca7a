"""The only module that combines translation and transport for one client request.

It walks the route's targets, builds each upstream request with the provider's spec,
sends it, and classifies failures; a retryable failure moves on to the next target, but
only before anything has reached the client. A stream is read until its first
translated chunk before the caller commits a 200, so an upstream that fails at once
(including with an error event) is still retried.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from truckllm import errors
from truckllm.limits import Limiter, UpstreamUse, upstream_ref
from truckllm.providers.base import CallContext, StreamTranslator, Target, UpstreamResponse
from truckllm.providers.media import PASS_THROUGH_OPERATIONS
from truckllm.records import Exchange, UpstreamFailure
from truckllm.sse import DONE, SSEDecoder, frame
from truckllm.state import CompiledProvider, Route, State, UpstreamKey
from truckllm.transport import Transport, TransportError

_NO_KEY = UpstreamKey("", "", 1.0)
_RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


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


@dataclass(slots=True)
class RawReply:
    """A pass-through answer (audio, images): upstream status, type and bytes as they come."""

    status: int
    content_type: str
    body: AsyncGenerator[bytes, None]  # aclose() on abandon releases the upstream
    upstream_use: UpstreamUse | None = None     # settled when the body is done


@dataclass(slots=True)
class StreamReply:
    first: bytes                       # framed events ready before the 200 was committed
    rest: AsyncGenerator[bytes, None]  # framed events, ending with [DONE]; aclose() on abandon
    upstream_use: UpstreamUse | None = None     # settle with the real usage when it ends


class _Retryable(Exception):
    def __init__(self, error: errors.GatewayError, reason: str = "error") -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason            # short fixed word for metrics: "429", "timeout", ...


async def dispatch(call: Call, transport: Transport,
                   exchange: Exchange) -> Reply | StreamReply | RawReply:
    failure: errors.GatewayError | None = None
    waits: list[float | None] = []         # targets skipped: every key at its upstream limit
    for target in call.targets:
        provider = call.state.providers[target.provider_id]
        if call.op not in provider.spec.operations:
            continue
        key = choose_key(provider, call)
        if key is None:
            waits.append(_capacity_wait(provider, call))
            continue
        exchange.attempts += 1
        exchange.provider_id, exchange.upstream_model = provider.id, target.model
        exchange.upstream_key_id = key.id
        use = _count_upstream(call, provider, key)
        try:
            reply: Reply | StreamReply | RawReply
            if call.op in PASS_THROUGH_OPERATIONS:
                reply = await _open_raw(call, provider, target, key, transport, exchange)
            elif call.ctx.stream:
                reply = await _open_stream(call, provider, target, key, transport, exchange)
            else:
                reply = await _complete(call, provider, target, key, transport, exchange)
        except _Retryable as retry:
            failure = retry.error
            exchange.error_reason = failure.type
            exchange.upstream_failures.append(UpstreamFailure(provider.id, key.id, retry.reason))
            _settle_unknown(use)
            continue
        except BaseException as exc:
            if isinstance(exc, errors.UpstreamStatus):     # a non-retryable upstream refusal
                exchange.upstream_failures.append(UpstreamFailure(provider.id, key.id, str(exc.status)))
            _settle_unknown(use)
            raise
        reply.upstream_use = use
        return reply
    if failure is None and waits:
        raise _all_keys_busy(call, waits)
    if failure is None:
        raise errors.InvalidRequest(
            f"model {call.ctx.alias!r} cannot serve {call.op} requests", param="model")
    raise failure


def choose_key(provider: CompiledProvider, call: Call | None = None) -> UpstreamKey | None:
    """A key by weight among those below their upstream rpm/tpm; None if all are at it."""
    keys = provider.keys
    if not keys:
        return _NO_KEY
    if call is not None and call.limiter is not None:
        limiter, policy = call.limiter, call.state.limits
        keys = tuple(k for k in keys if limiter.upstream_has_capacity(
            policy, upstream_ref(provider.id, k.id), call.estimate_tokens))
        if not keys:
            return None
    if len(keys) == 1:
        return keys[0]
    return random.choices(keys, weights=[k.weight for k in keys])[0]


def _count_upstream(call: Call, provider: CompiledProvider, key: UpstreamKey) -> UpstreamUse | None:
    if call.limiter is None or key is _NO_KEY:
        return None
    return call.limiter.upstream_acquire(call.state.limits, upstream_ref(provider.id, key.id),
                                         call.estimate_tokens)


def _settle_unknown(use: UpstreamUse | None) -> None:
    """A failed attempt reported no usage: its estimate stays counted against the key."""
    if use is not None:
        use.settle(None)


def _capacity_wait(provider: CompiledProvider, call: Call) -> float | None:
    assert call.limiter is not None
    waits = [call.limiter.upstream_wait_s(call.state.limits, upstream_ref(provider.id, k.id),
                                          call.estimate_tokens) for k in provider.keys]
    known = [w for w in waits if w is not None]
    return min(known) if known else None


def _all_keys_busy(call: Call, waits: list[float | None]) -> errors.Overloaded:
    known = [w for w in waits if w is not None]
    return errors.Overloaded(
        f"Every upstream key for model {call.ctx.alias!r} is at its rate limit; retry later.",
        retry_after_s=min(known) if known else None)


async def _send(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                transport: Transport) -> UpstreamResponse:
    request = provider.spec.build_request(call.op, call.body, target, key.value, call.ctx)
    try:
        return await transport.send(provider, target, request, call.ctx.request_id)
    except TransportError as exc:
        raise _Retryable(_transport_error(exc), exc.kind) from None


async def _complete(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange) -> Reply:
    started = time.perf_counter()
    response = await _send(call, provider, target, key, transport)
    try:
        raw = await response.read()
    except TransportError as exc:
        raise _Retryable(_transport_error(exc), exc.kind) from None
    finally:
        response.close()
        exchange.upstream_s += time.perf_counter() - started
    if response.status >= 400:
        raise _upstream_failure(provider, response.status, raw)
    parsed = provider.spec.parse_response(call.op, raw, target, call.ctx)
    exchange.usage = parsed.usage
    return Reply(parsed.body)


async def _open_stream(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                       transport: Transport, exchange: Exchange) -> StreamReply:
    started = time.perf_counter()
    response = await _send(call, provider, target, key, transport)
    if response.status >= 400:
        try:
            raw = await response.read()
        except TransportError as exc:
            raise _Retryable(_transport_error(exc), exc.kind) from None
        finally:
            response.close()
            exchange.upstream_s += time.perf_counter() - started
        raise _upstream_failure(provider, response.status, raw)
    translator = provider.spec.new_stream_translator(call.op, target, call.ctx)
    relay = _Relay(response, translator, exchange)
    try:
        first = await relay.first_output()
    except errors.GatewayError as exc:
        relay.abandon()
        raise _Retryable(exc, "stream") from None
    except TransportError as exc:
        relay.abandon()
        raise _Retryable(_transport_error(exc), exc.kind) from None
    finally:
        exchange.upstream_s += time.perf_counter() - started
    return StreamReply(first, relay.rest())


async def _open_raw(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange) -> RawReply:
    started = time.perf_counter()
    response = await _send(call, provider, target, key, transport)
    exchange.upstream_s += time.perf_counter() - started
    if response.status >= 400:
        try:
            raw = await response.read()
        except TransportError as exc:
            raise _Retryable(_transport_error(exc), exc.kind) from None
        finally:
            response.close()
        raise _upstream_failure(provider, response.status, raw)
    content_type = response.headers.get("Content-Type", "application/octet-stream")
    return RawReply(response.status, content_type, _raw_body(response))


async def _raw_body(response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.iter_chunks():
            yield chunk
    finally:
        response.close()


class _Relay:
    """Upstream bytes -> SSE events -> translator -> framed client events."""

    def __init__(self, response: UpstreamResponse, translator: StreamTranslator,
                 exchange: Exchange) -> None:
        self._response = response
        self._chunks = response.iter_chunks()
        self._decoder = SSEDecoder()
        self._translator = translator
        self._exchange = exchange
        self._ended = False
        self._pending: errors.GatewayError | None = None    # raised after the chunks before it

    async def first_output(self) -> bytes:
        """Read until the translator has something for the client (or upstream ended)."""
        async for raw in self._chunks:
            out = self._translate(raw)
            if out:
                return out
        self._ended = True
        return self._finish()

    async def rest(self) -> AsyncGenerator[bytes, None]:
        try:
            if not self._ended:
                self._raise_pending()
                async for raw in self._chunks:
                    out = self._translate(raw)
                    if out:
                        yield out
                    self._raise_pending()
                yield self._finish()
        except errors.GatewayError as exc:
            self._exchange.error_reason = exc.type
            yield frame(exc.to_json())
        except TransportError as exc:
            error = _transport_error(exc)
            self._exchange.error_reason = error.type
            yield frame(error.to_json())
        finally:
            self.abandon()
        yield DONE

    def abandon(self) -> None:
        self._exchange.usage = self._translator.usage
        self._response.close()

    def _translate(self, raw: bytes) -> bytes:
        translator = self._translator
        payloads: list[bytes] = []
        try:
            for event in self._decoder.feed(raw):
                payloads.extend(translator.feed(event))
        except errors.GatewayError as exc:
            if not payloads:
                raise
            # Chunks translated before an error event in the same read still reach the client.
            self._pending = exc
        if not payloads:
            return b""
        return b"".join(frame(p) for p in payloads)

    def _raise_pending(self) -> None:
        if self._pending is not None:
            raise self._pending

    def _finish(self) -> bytes:
        translator = self._translator
        payloads = [p for event in self._decoder.flush() for p in translator.feed(event)]
        payloads.extend(translator.close())
        self._exchange.usage = translator.usage
        return b"".join(frame(p) for p in payloads)


def _transport_error(exc: TransportError) -> errors.GatewayError:
    if exc.kind == "timeout":
        return errors.UpstreamTimeout(str(exc))
    return errors.UpstreamFailed(str(exc))


def _upstream_failure(provider: CompiledProvider, status: int, raw: bytes) -> Exception:
    """Retryable statuses move on to the next target; other client errors go back as is."""
    info = provider.spec.parse_error(status, raw)
    if status in _RETRYABLE_STATUSES:
        return _Retryable(errors.UpstreamFailed(
            f"provider {provider.id!r} failed with HTTP {status}: {info.message}"), str(status))
    return errors.UpstreamStatus(status, info.message, type=info.type, code=info.code, param=info.param)
