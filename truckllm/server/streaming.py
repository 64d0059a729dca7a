"""Writes a StreamReply to the client as SSE: headers, then each event the moment it is
ready, no buffering or compression. A client that leaves closes the upstream at once."""

from __future__ import annotations

import asyncio
import time

from aiohttp import HttpVersion11, web

from truckllm.pipeline.dispatch import RawReply, StreamReply
from truckllm.pipeline.record import Exchange
from truckllm.pipeline.transport import TransportError
from truckllm.server.edge import CLIENT_CLOSED_REQUEST, gateway_headers, ratelimit_headers_now

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",           # tell nginx-style proxies not to buffer either
}


async def write_stream(request: web.Request, reply: StreamReply, exchange: Exchange) -> web.StreamResponse:
    headers = {**_SSE_HEADERS, **gateway_headers(exchange), **ratelimit_headers_now(exchange)}
    response = web.StreamResponse(status=200, headers=headers)
    if request.version >= HttpVersion11:
        # What aiohttp chooses for this response anyway; asked for, so that `chunked`
        # says so before the headers go out (_direct_writer).
        response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        await response.write(reply.first)
        first_sent = time.perf_counter()
        exchange.ttft_s = first_sent - exchange.started
        try:
            await response.write_eof(await reply.write_rest(response.write, _direct_writer(request, response)))
        finally:
            # After the first chunk, time goes to waiting on upstream; the per-chunk relay
            # work is small and is not worth a clock read per chunk on the hot path.
            exchange.upstream_s += time.perf_counter() - first_sent
    except (ConnectionResetError, OSError):
        exchange.status = CLIENT_CLOSED_REQUEST
        exchange.error_reason = "client_disconnected"
    except Exception:
        # A fault after the headers went out cannot become an error response any more:
        # drop the connection so the client sees the stream break instead of waiting on it.
        if request.transport is not None:
            request.transport.close()
        raise
    finally:
        reply.release()                  # also when the stream never started (client gone)
    return response


class _ChunkedConnection:
    """The client's connection, written to directly (pipeline.stream.DirectWriter) in
    HTTP/1.1 chunks, as aiohttp's own writes to it are framed."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def ready(self) -> bool:
        transport = self._transport
        return not transport.is_closing() and transport.get_write_buffer_size() == 0

    def write(self, data: bytes) -> None:
        # One chunk of the chunked body: size in hex, CRLF, data, CRLF (RFC 9112 7.1),
        # between aiohttp's own chunks on the same connection.
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))


def _direct_writer(request: web.Request, response: web.StreamResponse) -> _ChunkedConnection | None:
    """A writer for the relay to use outside the request's task, once the response's
    headers are out: for a response in chunks (every stream, but an HTTP/1.0 client's)."""
    transport = request.transport
    if transport is None or not response.chunked:
        return None
    return _ChunkedConnection(transport)


async def write_raw(request: web.Request, reply: RawReply, exchange: Exchange) -> web.StreamResponse:
    """A pass-through answer (audio, images): upstream bytes relayed as they arrive."""
    response = web.StreamResponse(status=reply.status, headers={
        "Content-Type": reply.content_type, **gateway_headers(exchange), **ratelimit_headers_now(exchange)})
    body = reply.body
    try:
        await response.prepare(request)
        async for chunk in body:
            await response.write(chunk)
        await response.write_eof()
    except TransportError:
        # The status line is sent: the only honest signal left is to break the connection,
        # so the client sees an incomplete body instead of a short file that looks whole.
        exchange.error_reason = "upstream_error"
        if request.transport is not None:
            request.transport.close()
    except (ConnectionResetError, OSError):
        exchange.status = CLIENT_CLOSED_REQUEST
        exchange.error_reason = "client_disconnected"
    finally:
        await body.aclose()
        reply.release()                  # also when the body never started (client gone)
    return response
