"""A 200 from an OpenAI-type upstream that is not a valid answer, or a stream chunk that is
not a chunk (invalid UTF-8 included: it never reaches a client inside a JSON body), is an
upstream failure: tried on the next attempt while nothing has reached
the client, a 502 when no attempt answers, and an SSE error event and `[DONE]` once the
stream has started. Through the HTTP API, against the fake OpenAI upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
ATTEMPTS = 3                    # routing.max_attempts' default
GOOD_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"},
                           "finish_reason": None}]}


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    async with make_gateway(make_config(openai_fake.url)) as running:
        yield running


def sse_payloads(raw: bytes) -> list[bytes]:
    return [event.removeprefix(b"data: ") for event in raw.split(b"\n\n") if event.startswith(b"data: ")]


@pytest.mark.parametrize("scripted", [
    Scripted(body={"id": "x", "object": "chat.completion", "choices": "nope"}),
    Scripted(body={"id": "x", "object": "chat.completion", "choices": ["nope"]}),
    Scripted(body=[{"choices": []}]),
    Scripted(raw=b'{"id": "x", "choices": [', content_type="application/json"),
    Scripted(raw=b"<html>hello</html>", content_type="text/html"),
    Scripted(raw=b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, '
                 b'"message": {"role": "assistant", "content": "caf\xe9"}, "finish_reason": "stop"}]}'),
], ids=["choices not a list", "choices not objects", "an array", "cut short", "not JSON",
        "invalid UTF-8"])
async def test_a_200_that_is_not_an_answer_is_a_502_after_every_attempt(
        gateway: Gateway, openai_fake: OpenAIFake, scripted: Scripted) -> None:
    openai_fake.script(*[scripted] * ATTEMPTS)
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert response.status == 502
        assert orjson.loads(await response.read())["error"]["type"] == "upstream_error"
    assert len(openai_fake.requests) == ATTEMPTS


async def test_a_200_that_is_not_an_answer_is_retried(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(body={"id": "x", "object": "chat.completion", "choices": "nope"}))
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert response.status == 200
        answer = orjson.loads(await response.read())
    assert answer["model"] == "gpt" and answer["choices"][0]["message"]["content"]
    assert answer["usage"]["total_tokens"] > 0
    assert len(openai_fake.requests) == 2


INVALID_UTF8_CHUNK = orjson.dumps(GOOD_CHUNK).replace(b"Hello", b"caf\xe9")


@pytest.mark.parametrize("chunk", ["{broken json", INVALID_UTF8_CHUNK], ids=["broken JSON", "invalid UTF-8"])
async def test_a_broken_first_chunk_is_a_502_after_every_attempt(
        gateway: Gateway, openai_fake: OpenAIFake, chunk: str | bytes) -> None:
    openai_fake.script(*[Scripted(chunks=[chunk])] * ATTEMPTS)
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert response.status == 502
        assert orjson.loads(await response.read())["error"]["type"] == "upstream_error"
    assert len(openai_fake.requests) == ATTEMPTS


async def test_a_broken_first_chunk_is_retried(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(chunks=["{broken json"]))
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert response.status == 200
        payloads = sse_payloads(await response.read())
    assert payloads[-1] == b"[DONE]"
    assert all("error" not in orjson.loads(p) for p in payloads[:-1])
    assert len(openai_fake.requests) == 2


@pytest.mark.parametrize("chunk", ["{broken json", INVALID_UTF8_CHUNK], ids=["broken JSON", "invalid UTF-8"])
async def test_a_broken_chunk_after_the_first_ends_the_stream_with_an_error(
        gateway: Gateway, openai_fake: OpenAIFake, chunk: str | bytes) -> None:
    openai_fake.script(Scripted(chunks=[GOOD_CHUNK, chunk]))
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert response.status == 200
        payloads = sse_payloads(await response.read())
    assert orjson.loads(payloads[0])["choices"][0]["delta"]["content"] == "Hello"
    assert orjson.loads(payloads[0])["model"] == "gpt"
    assert orjson.loads(payloads[-2])["error"]["type"] == "upstream_error"
    assert payloads[-1] == b"[DONE]"
    assert len(openai_fake.requests) == 1
