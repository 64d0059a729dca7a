"""The SDK streaming contract checked on the real server's bytes, for every
provider type: fake Anthropic, Gemini and Azure (deployment and v1 URLs), an `openai`-type
provider (the fake Azure v1 API, which sends Azure's prompt-filter chunk), and the mock.
The same invariants as the conformance suite's, applied to what a client really receives."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.harness import CLIENT_KEY, Stack, check_stream_invariants

ALIASES = ["claude", "gem", "az", "az-v1", "oai-chat", "demo"]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


async def stream_chunks(stack: Stack, body: dict[str, Any]) -> list[Any]:
    """The chunk payloads of one streamed answer; asserts the stream ends with [DONE]."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.post(stack.url + "/chat/completions", json={**body, "stream": True}, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        raw = await response.read()
    events = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line.startswith(b"data: ")]
    assert events and events[-1] == b"[DONE]", "the stream ends with [DONE]"
    return [orjson.loads(event) for event in events[:-1]]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("alias", ALIASES)
async def test_text_stream_keeps_the_contract(stack: Stack, alias: str, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": alias, "messages": [{"role": "user", "content": "tell me a story please"}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = await stream_chunks(stack, body)
    check_stream_invariants(chunks, include_usage)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["stop"]
    if include_usage:
        assert chunks[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("alias", ALIASES)
async def test_parallel_tool_call_stream_keeps_the_contract(stack: Stack, alias: str, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": alias, "messages": [{"role": "user", "content": "weather in Paris and Rome?"}],
                            "tools": [WEATHER], "stream_options": {"include_usage": include_usage}}
    if alias == "demo":
        body["tool_choice"] = "required"       # the mock calls a tool only when told to
    chunks = await stream_chunks(stack, body)
    check_stream_invariants(chunks, include_usage)
    calls = [call for c in chunks for ch in c["choices"] for call in ch["delta"].get("tool_calls") or []]
    assert calls, "tool-call deltas are streamed"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]
