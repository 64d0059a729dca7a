"""A content part that is not an object with a string `type` is the client's mistake: a
400 naming the part, before any upstream is called, for keys with and without limits,
streamed or not; the key's concurrency slot is free again after each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio
LIMITED_KEY = "tk-limited-key-0001"
BAD_PARTS = [{"type": ["x"]}, {"type": {"a": 1}}, {"text": "no type"}, "just text", 5, None]


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    config = make_config(openai_fake.url)
    config["keys"].append({"id": "limited", "key": LIMITED_KEY, "tpm": 1_000_000,
                           "max_concurrent": 1})
    async with make_gateway(config) as running:
        yield running


@pytest.mark.parametrize("part", BAD_PARTS, ids=repr)
async def test_a_malformed_chat_part_is_a_400_before_any_call(
        gateway: Gateway, openai_fake: OpenAIFake, part: object) -> None:
    async with gateway.http() as http:
        for key in (CLIENT_KEY, LIMITED_KEY):
            for stream in (True, False):
                response = await http.post("/v1/chat/completions", headers={
                    "Authorization": f"Bearer {key}"}, json={
                    "model": "gpt", "stream": stream, "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]})
                error = orjson.loads(await response.read())["error"]
                assert response.status == 400
                assert error["param"] == "messages[0].content[1]"
        response = await http.post("/v1/messages", headers={"Authorization": f"Bearer {LIMITED_KEY}"},
                                   json={"model": "gpt", "max_tokens": 5, "stream": True,
                                         "messages": [{"role": "user", "content": [part]}]})
        assert response.status == 400
        assert orjson.loads(await response.read())["type"] == "error"
        assert openai_fake.requests == []
        # The limited key's one slot is free: a good request goes through.
        response = await http.post("/v1/chat/completions", headers={
            "Authorization": f"Bearer {LIMITED_KEY}"}, json={
            "model": "gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert response.status == 200 and (await response.read()).endswith(b"[DONE]\n\n")
