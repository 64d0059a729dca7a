"""The listener itself: what the HTTP layer refuses is answered in the OpenAI error shape
(a 16 KB header is a 431, bytes that are not HTTP a 400), idle and slow connections are
closed, a body that never ends gets a 408, and connections past `server.max_connections`
get a 503 at once. Raw sockets against the gateway's own listener, as `serve` runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from tests.harness import CLIENT_KEY, make_config, make_serve_process
from truckllm.config.loader import load_bytes
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server.app import create_app
from truckllm.server.connections import GatewaySite, handler_settings
from truckllm.server.keys import INFLIGHT

SETTINGS = {"log_level": "error", "keepalive_timeout_s": 0.5, "body_timeout_s": 0.5,
            "max_connections": 4}


@asynccontextmanager
async def listening(server: dict[str, Any] | None = None) -> AsyncIterator[tuple[int, web.Application]]:
    """The gateway's app behind its own listener (GatewaySite), as `truckllm serve` runs it."""
    config = make_config(server=server or SETTINGS)
    loaded = load_bytes(yaml.safe_dump(config).encode(), "connections.yaml", {})
    app = create_app(StateHolder(build_state(loaded, 1)))
    runner = web.AppRunner(app, handler_cancellation=True, **handler_settings(loaded.config.server))
    await runner.setup()
    site = GatewaySite(runner, "127.0.0.1", 0, loaded.config.server)
    await site.start()
    try:
        yield site.port, app
    finally:
        await runner.cleanup()


async def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer to the end: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    raw = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return parse(raw)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def openai_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


SECRET_BEARER = "Bearer tk-" + "s3cr3t" * 2700         # 16 KB


async def test_a_16kb_authorization_header_is_a_431_in_the_openai_shape() -> None:
    async with listening() as (port, _):
        status, headers, body = await exchange(port, (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {SECRET_BEARER}\r\nContent-Length: 2\r\n\r\n{{}}").encode())
    assert status == 431
    error = openai_error(headers, body)
    assert error["code"] == "request_header_fields_too_large"
    assert b"s3cr3t" not in body


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(60),          # TLS to a plain port
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
    b"hello there\r\n\r\n",
], ids=["tls", "space in name", "control in value", "long url", "200 headers", "not http"])
async def test_whatever_the_http_layer_refuses_is_json(data: bytes) -> None:
    async with listening() as (port, _):
        status, headers, body = await exchange(port, data)
        assert status in (400, 431)
        assert openai_error(headers, body)["type"] == "invalid_request_error"
        status, _, _ = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200


async def test_idle_and_slow_header_connections_are_closed() -> None:
    async with listening() as (port, _):
        idle = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n")          # and no more
        for reader, writer in (idle, slow):
            assert await asyncio.wait_for(reader.read(), 5) == b""    # closed by the gateway
            writer.close()


async def test_a_body_that_never_ends_gets_a_408_and_leaves_nothing_in_flight() -> None:
    async with listening() as (port, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\n{\"mod\r\n")                              # and never the rest
        # The answer comes at once; aiohttp then drains the body for a bounded while.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        status, headers, _ = parse(head)
        body = await reader.readexactly(int(headers["content-length"]))
        writer.close()
        assert status == 408
        assert openai_error(headers, body)["code"] == "request_timeout"
        assert app[INFLIGHT].count == 0


async def test_connections_past_the_cap_get_a_503_at_once() -> None:
    async with listening({**SETTINGS, "keepalive_timeout_s": 30}) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.05)
        status, headers, body = await exchange(
            port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1"
        assert openai_error(headers, body)["code"] == "too_many_connections"
        # The held connections still work, and a freed place is taken again.
        reader, writer = held.pop()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert parse(await asyncio.wait_for(reader.read(), 5))[0] == 200
        writer.close()
        await asyncio.sleep(0.05)
        status, _, _ = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200
        for _, other in held:
            other.close()


def test_serve_answers_an_oversized_header_and_a_connection_past_the_cap_in_json(
        tmp_path: Path) -> None:
    """The same through a real `truckllm serve` process (on uvloop, as in production)."""
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(make_config(server={"log_level": "info",
                                                              "max_connections": 3})))
    with make_serve_process(config_path) as served:
        async def ask() -> list[tuple[int, dict[str, str], bytes]]:
            answers = [await exchange(served.port, (
                f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET_BEARER}\r\n\r\n").encode())]
            held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
            await asyncio.sleep(0.2)
            answers.append(await exchange(served.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
            for _, writer in held:
                writer.close()
            return answers
        (status, headers, body), (over, over_headers, over_body) = asyncio.run(ask())
        assert status == 431 and openai_error(headers, body)["type"] == "invalid_request_error"
        assert over == 503 and openai_error(over_headers, over_body)["code"] == "too_many_connections"
        served.stop()
        assert "s3cr3t" not in served.output()
