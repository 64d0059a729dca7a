"""The fakes are only useful if they speak the real wire formats: the official SDKs talk
to them directly here (Anthropic SDK -> fake Anthropic, AzureOpenAI -> fake Azure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest
from openai import AsyncAzureOpenAI

from tests.fakes.anthropic_fake import THINKING_SIGNATURE, make_anthropic_fake
from tests.fakes.azure_fake import make_azure_fake
from tests.fakes.gemini_fake import SIGNATURE, make_gemini_fake
from tests.harness import imported_on_first_use

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = imported_on_first_use("anthropic")

TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


async def test_anthropic_sdk_streams_tool_use_from_the_fake() -> None:
    async with make_anthropic_fake() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url.removesuffix("/v1"), api_key="sk-ant-x",
                                          max_retries=0, timeout=5)
        async with client.messages.stream(model="claude-x", max_tokens=50, tools=[TOOL],  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "weather in Paris and Rome"}]) as s:
            final = await s.get_final_message()
        await client.close()
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "Rome"}]
    assert fake.requests[0].headers["authorization"] == "Bearer sk-ant-x"   # what this SDK version sends


async def test_azure_sdk_streams_from_the_fake() -> None:
    async with make_azure_fake() as fake:
        client = AsyncAzureOpenAI(azure_endpoint=fake.url, api_key="az-x", api_version="2024-10-21",
                                  max_retries=0, timeout=5)
        stream = await client.chat.completions.create(model="dep", messages=[{"role": "user", "content": "hi there"}],
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        await client.close()
    assert chunks[0].choices == [] and chunks[-1].usage is not None    # Azure's filter chunk, usage last
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Fake reply to: hi there"
    assert fake.requests[0].path == "/openai/deployments/dep/chat/completions"


async def test_gemini_fake_streams_sse_only_when_asked() -> None:
    async with make_gemini_fake() as fake, aiohttp.ClientSession() as http:
        body = {"contents": [{"role": "user", "parts": [{"text": "weather in Paris"}]}],
                "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]}
        url = f"{fake.url}/models/gemini-x:streamGenerateContent?alt=sse"
        async with http.post(url, json=body, headers={"x-goog-api-key": "k"}) as response:
            text = await response.text()
        async with http.post(f"{fake.url}/models/gemini-x:generateContent", json=body) as unauthorised:
            assert unauthorised.status == 400
    events = [orjson.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: ")]
    part = events[-1]["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert part["thoughtSignature"] == SIGNATURE and events[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_anthropic_fake_refuses_a_tool_use_turn_without_its_thinking_block() -> None:
    """The real API's rule with thinking on: the final assistant turn with tool_use opens
    with its thinking block, whose signature the API issued."""
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}]}
    thinking = {"type": "enabled", "budget_tokens": 1024}
    async with make_anthropic_fake() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url.removesuffix("/v1"), api_key="k", max_retries=0, timeout=5)
        for content, error in (
                ([use], "must start with a thinking block"),
                ([{"type": "thinking", "thinking": "x", "signature": "forged"}, use], "Invalid `signature`")):
            with pytest.raises(anthropic.BadRequestError, match=error):
                await client.messages.create(model="m", max_tokens=2048, thinking=thinking, tools=[tool],
                                             messages=[{"role": "user", "content": "weather?"},
                                                       {"role": "assistant", "content": content}, result])
        signed = {"type": "thinking", "thinking": "x", "signature": THINKING_SIGNATURE}
        answer = await client.messages.create(model="m", max_tokens=2048, thinking=thinking, tools=[tool],
                                              messages=[{"role": "user", "content": "weather?"},
                                                        {"role": "assistant", "content": [signed, use]}, result])
        await client.close()
    assert answer.content[0].type == "thinking"
