"""Transport: a stream's idle limit counts only time spent waiting on upstream for the
next chunk, never time the reader spends elsewhere (writing to a slow client), and it
holds however long the stream runs; the same for the stream relay, which reads the
upstream in its own frame. A real local upstream; nothing is mocked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from truckllm.config.loader import load_bytes
from truckllm.pipeline.health import Health
from truckllm.pipeline.record import Exchange
from truckllm.pipeline.stream import StreamRelay
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import OPENAI_STREAM, CallContext, Target, UpstreamRequest
from truckllm.providers.openai import PassThroughStream
from truckllm.runtime.state import CompiledProvider, build_state

IDLE_S = 0.2


def line(index: int) -> bytes:
    return f"chunk {index}\n".encode()


def sse_chunk(index: int) -> bytes:
    """One event of a chat stream, its last (index 3) a finish."""
    finish = '"stop"' if index == 3 else "null"
    return (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
            b'[{"index":0,"delta":{"content":"w%d"},"finish_reason":%b}]}\n\n' % (index, finish.encode()))


@asynccontextmanager
async def make_upstream(gaps_s: Sequence[float], first_after_s: float,
                        chunk: Callable[[int], bytes] = line) -> AsyncIterator[str]:
    """Sends its headers, then one chunk after `first_after_s`, then one more after each
    gap in `gaps_s`."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(first_after_s)
        await response.write(chunk(0))
        for index, gap in enumerate(gaps_s, start=1):
            await asyncio.sleep(gap)
            await response.write(chunk(index))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def make_provider(base_url: str) -> tuple[CompiledProvider, Target]:
    config = f"""version: 1
providers:
  - id: up
    type: openai
    base_url: {base_url}
    idle_timeout_s: {IDLE_S}
    keys: [{{id: k, value: sk-test}}]
models:
  - alias: m
    targets: [{{provider: up, model: m}}]
"""
    state = build_state(load_bytes(config.encode(), "test.yaml"), 1)
    return state.providers["up"], state.routes["m"].targets[0]


async def read_all(gaps_s: Sequence[float], pause_after_each_s: float = 0.0,
                   first_after_s: float = 0.0) -> list[bytes]:
    async with make_upstream(gaps_s, first_after_s) as base_url:
        provider, target = make_provider(base_url)
        transport = Transport()
        request = UpstreamRequest("POST", base_url + "/chat/completions", {}, b"{}", True)
        response = await transport.send(provider, target, request, "req-1")
        chunks: list[bytes] = []
        try:
            async for chunk in response.iter_chunks():
                chunks.append(chunk)
                await asyncio.sleep(pause_after_each_s)     # a slow client being written to
        finally:
            response.close()
            await transport.close()
        return chunks


async def test_gaps_under_the_limit_never_stall_however_long_the_stream() -> None:
    chunks = await read_all([IDLE_S / 2] * 6)                # 0.6 s in all, 0.1 s apart
    assert b"".join(chunks).count(b"chunk") == 7


async def test_time_spent_away_from_the_read_does_not_count() -> None:
    chunks = await read_all([0.0, 0.0], pause_after_each_s=IDLE_S * 2)
    assert b"".join(chunks).count(b"chunk") == 3


async def test_a_gap_over_the_limit_while_reading_fails_the_stream() -> None:
    with pytest.raises(TransportError) as failure:
        await read_all([0.0, IDLE_S * 3])
    assert failure.value.kind == "timeout" and "stalled" in str(failure.value)


async def test_the_wait_for_the_first_chunk_is_not_limited() -> None:
    chunks = await read_all([], first_after_s=IDLE_S * 2)    # dispatch bounds that wait
    assert chunks == [b"chunk 0\n"]


async def relay_all(gaps_s: Sequence[float], pause_per_write_s: float) -> bytes:
    """A chat stream of four chunks through the stream relay, to a client that takes
    `pause_per_write_s` over each write."""
    async with make_upstream(gaps_s, 0.0, sse_chunk) as base_url:
        provider, target = make_provider(base_url)
        transport = Transport()
        request = UpstreamRequest("POST", base_url + "/chat/completions", {}, b"{}", True)
        response = await transport.send(provider, target, request, "req-1")
        relay = StreamRelay(response, PassThroughStream(CallContext("m", "req-1", 1, True, False)),
                            OPENAI_STREAM, Exchange("req-1", "POST", "/v1/chat/completions"),
                            Health().begin(("up", "m"), "up/k"))
        sent = [await relay.first_output()]

        async def write(data: bytes) -> None:
            await asyncio.sleep(pause_per_write_s)          # a slow client
            sent.append(data)

        try:
            sent.append(await relay.write_rest(write))
        finally:
            relay.abandon()
            await transport.close()
        return b"".join(sent)


async def test_the_relay_counts_only_its_waits_on_upstream() -> None:
    sent = await relay_all([0.0, 0.0, IDLE_S / 2], pause_per_write_s=IDLE_S * 2)
    assert b"error" not in sent and sent.count(b'"content":"w') == 4
    assert sent.endswith(b"data: [DONE]\n\n")


async def test_a_gap_over_the_limit_while_the_relay_waits_ends_the_stream() -> None:
    sent = await relay_all([0.0, IDLE_S * 3, 0.0], pause_per_write_s=0.0)
    assert b'"type":"timeout_error"' in sent and b"stalled" in sent
    assert sent.count(b'"content":"w') == 2 and sent.endswith(b"data: [DONE]\n\n")
