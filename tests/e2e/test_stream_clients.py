"""A stream reaches every client whole and in order, however it reads: one that stops
reading for a while mid-stream (its connection backs up, and the gateway waits for it
rather than buffering or dropping), and an HTTP/1.0 client (no chunked encoding: the
stream ends with the connection). Through the HTTP API, against the fake OpenAI upstream."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, make_config, make_gateway

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def numbered_chunks(count: int, size: int) -> list[bytes]:
    """Content chunks whose text starts with their number, `size` bytes of text each."""
    return [orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                          "choices": [{"index": 0, "delta": {"content": f"{n:05d}".ljust(size, "x")},
                                       "finish_reason": "stop" if n == count - 1 else None}]})
            for n in range(count)]


def contents(body: bytes) -> list[str]:
    events = [event.removeprefix(b"data: ") for event in body.split(b"\n\n") if event]
    assert events[-1] == b"[DONE]", events[-1][:200]
    return [orjson.loads(event)["choices"][0]["delta"]["content"][:5] for event in events[:-1]]


async def test_a_client_that_stops_reading_mid_stream_gets_all_of_it_in_order(openai_fake: OpenAIFake) -> None:
    count = 1500    # 1,500 chunks of 8 KB: more than the sockets' buffers hold
    openai_fake.script(Scripted(chunks=numbered_chunks(count, 8192)))
    # A small read buffer: the client's connection backs up to the gateway at once.
    async with make_gateway(make_config(openai_fake.url)) as gateway, \
            aiohttp.ClientSession(read_bufsize=4096) as session, \
            session.post(f"{gateway.url}/chat/completions", json=BODY, headers=AUTH,
                         timeout=aiohttp.ClientTimeout(total=30)) as response:
        assert response.status == 200
        first = await response.content.readany()
        await asyncio.sleep(0.5)            # meanwhile the upstream sends everything
        rest = await response.read()
    assert contents(first + rest) == [f"{n:05d}" for n in range(count)]


async def test_an_http_1_0_client_gets_the_stream_until_the_connection_ends(openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(chunks=numbered_chunks(5, 10), chunk_delay_s=0.01))
    async with make_gateway(make_config(openai_fake.url)) as gateway:
        host, port = gateway.root.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = orjson.dumps(BODY)
        writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nHost: gateway\r\n"
                     b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (CLIENT_KEY.encode(), len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)        # until the gateway closes
        writer.close()
    head, _, stream = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert contents(stream) == [f"{n:05d}" for n in range(5)]
