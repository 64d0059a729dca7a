"""Anthropic-shaped answers for `POST /v1/messages`: error bodies, and the relay's framed
events re-framed as named Anthropic SSE events (the Anthropic SDKs dispatch on `event:`
and ignore events without one, so an unnamed error would be silently lost)."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

import orjson
from aiohttp import web

from truckllm.errors import GatewayError
from truckllm.pipeline.dispatch import StreamReply
from truckllm.pipeline.record import Exchange
from truckllm.pipeline.sse import SSEDecoder, frame_event
from truckllm.protocols.anthropic_inbound import anthropic_error
from truckllm.server.edge import gateway_headers

_LEADING_TYPE = re.compile(rb'^\{"type":"([a-z_]+)"')


def error_response(exc: GatewayError, exchange: Exchange) -> web.Response:
    exchange.error_reason = exchange.error_reason or exc.type
    body = orjson.dumps(anthropic_error(exc.status, exc.body()))
    return web.Response(status=exc.status, body=body, content_type="application/json",
                        headers={**exc.headers(), **gateway_headers(exchange)})


def reframe(reply: StreamReply) -> StreamReply:
    decoder = SSEDecoder()
    return StreamReply(_named_events(decoder, reply.first), _rest(decoder, reply.rest),
                       reply.upstream_use, release=reply.release)


async def _rest(decoder: SSEDecoder, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        async for framed in rest:
            out = _named_events(decoder, framed)
            if out:
                yield out
    finally:
        await rest.aclose()


def _named_events(decoder: SSEDecoder, framed: bytes) -> bytes:
    out: list[bytes] = []
    for event in decoder.feed(framed):
        data = event.data
        if data == b"[DONE]":
            continue                    # Anthropic streams end with message_stop
        if data.startswith(b'{"error"'):
            out.append(frame_event("error", orjson.dumps(anthropic_error(None, orjson.loads(data)))))
            continue
        match = _LEADING_TYPE.match(data)
        name = match.group(1).decode() if match else str(orjson.loads(data).get("type") or "message")
        out.append(frame_event(name, data))
    return b"".join(out)
