"""Tiny OpenAI-speaking upstreams for what tests/fakes/openai_fake.py does not script:
one that starts a stream and then stalls (a few chunks, then nothing until the caller
goes away, bounded; it records whether the caller closed the connection), and one that
answers every request, `GET /v1/models` included, with one fixed status.
Imports nothing from truckllm: they stand for the outside world.
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


class FixedStatusUpstream:
    """Answers everything with `status` (an OpenAI error body, or `{"data": []}` for a 2xx)
    and records each request as (method, path, headers with lower-case names)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.url = ""
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.seen.append((request.method, request.path, headers))
        body: dict[str, object] = {"data": []}
        if self.status >= 400:
            body = {"error": {"message": f"fake {self.status}", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key" if self.status == 401 else None}}
        return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json")


@asynccontextmanager
async def make_fixed_upstream(status: int = 401) -> AsyncIterator[FixedStatusUpstream]:
    upstream = FixedStatusUpstream(status)
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server()
    upstream.url = str(server.make_url("/v1"))
    try:
        yield upstream
    finally:
        await server.close()
