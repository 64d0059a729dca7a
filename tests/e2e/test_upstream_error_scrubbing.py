"""An upstream error passed on to the client (status, type, code, param, message) never
carries the upstream key, in whichever field the upstream echoed it: plain answers,
streams (before and after the first byte) and the Anthropic-shaped /v1/messages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
SECRET = "sk-upstream-secret-1"         # the key the gateway sends upstream
OTHER = "sk-proj-AbCdEf0123456789"      # any key-shaped text
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
ECHOING_ERROR = {"error": {"message": f"bad key {SECRET}", "type": f"invalid_{SECRET}",
                           "param": f"auth {OTHER}", "code": f"{SECRET}-{OTHER}"}}


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    async with make_gateway(make_config(openai_fake.url)) as running:
        yield running


def assert_clean(text: bytes) -> None:
    assert SECRET.encode() not in text
    assert OTHER.encode() not in text
    assert b"sk-upstream" not in text


async def test_a_plain_upstream_400_is_passed_on_without_the_key(
        gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(status=400, body=ECHOING_ERROR))
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        raw = await response.read()
    assert response.status == 400
    assert_clean(raw)
    error = orjson.loads(raw)["error"]
    assert error["type"] and error["param"] and error["code"]     # passed on, masked


async def test_a_stream_refused_before_its_first_byte_is_passed_on_without_the_key(
        gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(status=400, body=ECHOING_ERROR))
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                   headers=AUTH)
        raw = await response.read()
    assert response.status == 400
    assert_clean(raw)


async def test_an_error_event_mid_stream_is_relayed_without_the_key(
        gateway: Gateway, openai_fake: OpenAIFake) -> None:
    first = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"},
                          "finish_reason": None}]}
    openai_fake.script(Scripted(chunks=[first, ECHOING_ERROR], done=False))
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                   headers=AUTH)
        raw = await response.read()
    assert response.status == 200
    assert b'"error"' in raw and raw.endswith(b"data: [DONE]\n\n")
    assert_clean(raw)


async def test_a_messages_error_is_passed_on_without_the_key(
        gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(status=400, body=ECHOING_ERROR))
    async with gateway.http() as http:
        response = await http.post("/v1/messages", headers=AUTH, json={
            "model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        raw = await response.read()
    assert response.status == 400
    assert orjson.loads(raw)["type"] == "error"
    assert_clean(raw)
