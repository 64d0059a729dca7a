"""A local upstream that sends a streamed body in chunks at set times, and the compiled
provider config for it: for tests of reading and relaying a stream as it arrives
(tests/pipeline). Real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from aiohttp import web

from truckllm.config.loader import load_bytes
from truckllm.providers.base import Target
from truckllm.runtime.state import CompiledProvider, build_state


def line(index: int) -> bytes:
    return f"chunk {index}\n".encode()


def chat_chunk(index: int) -> bytes:
    """One event of a chat stream, its last (index 3) a finish."""
    finish = '"stop"' if index == 3 else "null"
    return (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
            b'[{"index":0,"delta":{"content":"w%d"},"finish_reason":%b}]}\n\n' % (index, finish.encode()))


@asynccontextmanager
async def paced_upstream(gaps_s: Sequence[float], first_after_s: float = 0.0,
                         chunk: Callable[[int], bytes] = line,
                         compressed: bool = False) -> AsyncIterator[str]:
    """Serves POST /v1/chat/completions (yields the /v1 URL): its headers, then
    `chunk(0)` after `first_after_s`, then `chunk(i)` after the i-th gap in `gaps_s`;
    gzipped when `compressed`."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if compressed:
            response.enable_compression(web.ContentCoding.gzip)
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


def compiled_provider(base_url: str, idle_timeout_s: float) -> tuple[CompiledProvider, Target]:
    """An OpenAI provider `up` at `base_url` with one key, and the target of alias `m`."""
    config = f"""version: 1
providers:
  - id: up
    type: openai
    base_url: {base_url}
    idle_timeout_s: {idle_timeout_s}
    keys: [{{id: k, value: sk-test}}]
models:
  - alias: m
    targets: [{{provider: up, model: m}}]
"""
    state = build_state(load_bytes(config.encode(), "test.yaml"), 1)
    return state.providers["up"], state.routes["m"].targets[0]
