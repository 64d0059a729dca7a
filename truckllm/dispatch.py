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
from truckllm.providers.base import CallContext, StreamTranslator, Target, UpstreamResponse
from truckllm.records import Exchange
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


@dataclass(slots=True)
class Reply:
    body: bytes


@dataclass(slots=True)
class StreamReply:
    first: bytes                       # framed events ready before the 200 was committed
    rest: AsyncGenerator[bytes, None]  # framed events, ending with [DONE]; aclose() on abandon


class _Retryable(Exception):
    def __init__(self, error: errors.GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


async def dispatch(call: Call, transport: Transport, exchange: Exchange) -> Reply | StreamReply:
    failure: errors.GatewayError | None = None
    for target in call.targets:
        provider = call.state.providers[target.provider_id]
        if call.op not in provider.spec.operations:
            continue
        key = choose_key(provider)
        exchange.attempts += 1
        exchange.provider_id, exchange.upstream_model = provider.id, target.model
        try:
            if call.ctx.stream:
                return await _open_stream(call, provider, target, key, transport, exchange)
            return await _complete(call, provider, target, key, transport, exchange)
        except _Retryable as retry:
            failure = retry.error
            exchange.error_reason = failure.type
    if failure is None:
        raise errors.InvalidRequest(
            f"model {call.ctx.alias!r} cannot serve {call.op} requests", param="model")
    raise failure


def choose_key(provider: CompiledProvider) -> UpstreamKey:
    keys = provider.keys
    if not keys:
        return _NO_KEY
    if len(keys) == 1:
        return keys[0]
    return random.choices(keys, weights=[k.weight for k in keys])[0]


async def _send(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                transport: Transport) -> UpstreamResponse:
    request = provider.spec.build_request(call.op, call.body, target, key.value, call.ctx)
    try:
        return await transport.send(provider, target, request, call.ctx.request_id)
    except TransportError as exc:
        raise _Retryable(_transport_error(exc)) from None


async def _complete(call: Call, provider: CompiledProvider, target: Target, key: UpstreamKey,
                    transport: Transport, exchange: Exchange) -> Reply:
    started = time.perf_counter()
    response = await _send(call, provider, target, key, transport)
    try:
        raw = await response.read()
    except TransportError as exc:
        raise _Retryable(_transport_error(exc)) from None
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
            raise _Retryable(_transport_error(exc)) from None
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
        raise _Retryable(exc) from None
    except TransportError as exc:
        relay.abandon()
        raise _Retryable(_transport_error(exc)) from None
    finally:
        exchange.upstream_s += time.perf_counter() - started
    return StreamReply(first, relay.rest())


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
                async for raw in self._chunks:
                    out = self._translate(raw)
                    if out:
                        yield out
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
        payloads = [p for event in self._decoder.feed(raw) for p in translator.feed(event)]
        if not payloads:
            return b""
        return b"".join(frame(p) for p in payloads)

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
            f"provider {provider.id!r} failed with HTTP {status}: {info.message}"))
    return errors.UpstreamStatus(status, info.message, type=info.type, code=info.code, param=info.param)
