"""A tiny OpenAI-speaking upstream that starts a stream and then stalls: it sends a few
chunks, then nothing, until the caller goes away (bounded). It records whether the caller
closed the connection. Imports nothing from truckllm: it stands for the outside world.
(Everything else a test needs from an upstream, tests/fakes/openai_fake.py scripts.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

STALL_LIMIT_S = 30.0
POLL_S = 0.005


class StallingUpstream:
    def __init__(self, chunks_before_stall: int) -> None:
        self.chunks_before_stall = chunks_before_stall
        self.url = ""
        self.requests = 0
        self.caller_left = asyncio.Event()
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for index in range(self.chunks_before_stall):
                delta = {"role": "assistant", "content": ""} if index == 0 else {"content": f" w{index}"}
                chunk = {"id": "chatcmpl-stall", "object": "chat.completion.chunk", "created": 1,
                         "model": body.get("model", ""),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await self._stall(request)
        except (asyncio.CancelledError, ConnectionError):
            self.caller_left.set()
            raise
        return response

    async def _stall(self, request: web.Request) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_LIMIT_S
        while loop.time() < deadline and not self._release.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                self.caller_left.set()
                return
            await asyncio.sleep(POLL_S)

    def close(self) -> None:
        self._release.set()


@asynccontextmanager
async def make_stalling_upstream(chunks_before_stall: int = 2) -> AsyncIterator[StallingUpstream]:
    upstream = StallingUpstream(chunks_before_stall)
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server()
    upstream.url = str(server.make_url("/v1"))
    try:
        yield upstream
    finally:
        upstream.close()
        await server.close()
