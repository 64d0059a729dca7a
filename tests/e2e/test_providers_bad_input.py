"""Malformed fields that only the translating providers read (tool_choice, response_format,
Anthropic Messages blocks) get a clear 400 naming the field, never a 500, and nothing is
sent upstream. Raw HTTP through the real app to the fake Anthropic and Gemini servers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.harness import CLIENT_KEY, Stack

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

CHAT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("tool_choice function not an object", {"tools": TOOLS, "tool_choice": {"type": "function", "function": "f"}},
     "tool_choice"),
    ("json_schema not an object", {"response_format": {"type": "json_schema", "json_schema": "x"}},
     "response_format.json_schema.schema"),
]
MESSAGES_CASES: list[tuple[str, list[Any], str]] = [
    ("message without content", [{"role": "user"}], "messages.0.content"),
    ("tool_result without tool_use_id", [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
     "messages.0.content.0.tool_use_id"),
    ("tool_use without id or name", [{"role": "assistant", "content": [{"type": "tool_use", "input": {}}]}],
     "messages.0.content.0"),
    ("image url source without url", [{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}],
     "messages.0.content.0"),
]


async def post(stack: Stack, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.post(stack.root + path, json=body, headers=AUTH) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("alias", ["claude", "gem"])
@pytest.mark.parametrize(("name", "fields", "param"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
async def test_malformed_chat_field_is_a_400(stack: Stack, alias: str, name: str, fields: dict[str, Any],
                                             param: str) -> None:
    status, body = await post(stack, "/v1/chat/completions", {"model": alias, "messages": USER, **fields})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param
    assert stack.anthropic.requests == [] and stack.gemini.requests == []


@pytest.mark.parametrize("alias", ["gem", "az"])
@pytest.mark.parametrize(("name", "messages", "param"), MESSAGES_CASES, ids=[c[0] for c in MESSAGES_CASES])
async def test_malformed_messages_block_is_an_anthropic_400(stack: Stack, alias: str, name: str,
                                                            messages: list[Any], param: str) -> None:
    status, body = await post(stack, "/v1/messages", {"model": alias, "max_tokens": 10, "messages": messages})
    assert status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert param in body["error"]["message"]
    assert stack.gemini.requests == [] and stack.azure.requests == []
