"""Transport: a whole answer read by `fetch` gives its connection back to the pool (no
release() is called after aiohttp has done it), and an answer cut short is a "connect"
failure. A real local upstream; nothing is mocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from truckllm.config.loader import load_bytes
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import Target, UpstreamRequest
from truckllm.runtime.state import CompiledProvider, build_state


@asynccontextmanager
async def make_upstream(peers: set[object]) -> AsyncIterator[str]:
    """Answers /v1/ok whole and /v1/cut with less body than its Content-Length says;
    notes the client address of every request."""

    async def ok(request: web.Request) -> web.StreamResponse:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"ok": True})

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"partial": ')
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/ok", ok)
    app.router.add_post("/v1/cut", cut)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/v1"))
    finally:
        await server.close()


def make_provider(base_url: str) -> tuple[CompiledProvider, Target]:
    config = f"""version: 1
providers:
  - {{id: up, type: openai, base_url: "{base_url}", keys: [{{id: k, value: sk-test}}]}}
models:
  - alias: m
    targets: [{{provider: up, model: m}}]
"""
    state = build_state(load_bytes(config.encode(), "test.yaml"), 1)
    return state.providers["up"], state.routes["m"].targets[0]


async def test_whole_answers_reuse_one_pooled_connection() -> None:
    peers: set[object] = set()
    async with make_upstream(peers) as base_url:
        provider, target = make_provider(base_url)
        transport = Transport()
        try:
            for number in range(3):
                request = UpstreamRequest("POST", base_url + "/ok", {}, b"{}", False)
                status, _, body = await transport.fetch(provider, target, request, f"req-{number}")
                assert (status, body) == (200, b'{"ok": true}')
        finally:
            await transport.close()
    assert len(peers) == 1


async def test_an_answer_cut_short_is_a_connect_failure() -> None:
    async with make_upstream(set()) as base_url:
        provider, target = make_provider(base_url)
        transport = Transport()
        try:
            request = UpstreamRequest("POST", base_url + "/cut", {}, b"{}", False)
            with pytest.raises(TransportError) as failure:
                await transport.fetch(provider, target, request, "req-1")
        finally:
            await transport.close()
    assert failure.value.kind == "connect" and "upstream connection failed" in str(failure.value)


