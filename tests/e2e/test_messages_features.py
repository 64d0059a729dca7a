"""End to end: the real `anthropic` SDK's beta client (`?beta=true`, `anthropic-beta`) on
TruckLLM's /v1/messages with the fields current clients send — a system message in the
middle of `messages`, `thinking`, `output_config.effort`, `context_management`,
`cache_control` on system blocks, messages and tools, `metadata` — on an Anthropic alias
(passed through as sent), a Gemini alias and an OpenAI-type alias (translated, or left out
where the target has no equivalent); and token counting on every alias."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.fakes.anthropic_fake import THINKING_SIGNATURE
from tests.harness import CLIENT_KEY, TLS, Stack, imported_on_first_use

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = imported_on_first_use("anthropic")

BETAS = ["mid-conversation-system-2026-04-07", "effort-2025-11-24", "context-management-2025-06-27",
         "interleaved-thinking-2025-05-14"]
EPHEMERAL = {"type": "ephemeral"}
TOOL: Any = {"name": "get_weather", "description": "Current weather for a city.", "cache_control": EPHEMERAL,
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
FIELDS: Any = {
    "system": [{"type": "text", "text": "You are terse.", "cache_control": EPHEMERAL}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hello there", "cache_control": EPHEMERAL}]},
        {"role": "system", "content": "Answer in French from now on."},
    ],
    "tools": [TOOL],
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "output_config": {"effort": "low"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "metadata": {"user_id": "user-1234"},
}


def make_client(stack: Stack) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=stack.root, api_key=CLIENT_KEY, max_retries=0, timeout=10,
                                      http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS))
    stack.clients.append(client)
    return client


async def create(stack: Stack, alias: str, stream: bool) -> str:
    """The answer's text, through the SDK's beta client (non-stream or its stream helper)."""
    client = make_client(stack)
    if stream:
        async with client.beta.messages.stream(model=alias, max_tokens=4096, betas=BETAS, **FIELDS) as events:
            message = await events.get_final_message()
    else:
        message = await client.beta.messages.create(model=alias, max_tokens=4096, betas=BETAS, **FIELDS)
    assert message.model == alias
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_gets_every_field_as_sent(stack: Stack, stream: bool) -> None:
    text = await create(stack, "claude", stream)
    assert text == "Fake reply to: hello there"
    sent = stack.anthropic.requests[-1]
    assert sent.headers["anthropic-beta"] == ",".join(BETAS)
    expected = {"model": "claude-sonnet-4-5", "max_tokens": 4096, **FIELDS}
    assert {k: v for k, v in sent.body.items() if k != "stream"} == expected


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_gets_the_system_message_and_a_thinking_budget(stack: Stack, stream: bool) -> None:
    text = await create(stack, "gem", stream)
    assert text == "Fake reply to: hello there"
    body = stack.gemini.requests[-1].body
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."},
                                                   {"text": "Answer in French from now on."}]}
    assert [c["role"] for c in body["contents"]] == ["user"]
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024}    # effort low
    assert not {"thinking", "output_config", "context_management", "metadata"} & set(body)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_gets_the_system_message_in_place_and_a_reasoning_effort(stack: Stack, stream: bool) -> None:
    text = await create(stack, "oai-chat", stream)
    assert text == "Fake reply to: hello there"
    body = stack.azure.requests[-1].body
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "You are terse."), ("user", "hello there"), ("system", "Answer in French from now on.")]
    assert body["reasoning_effort"] == "low" and body["user"] == "user-1234"
    assert body["tools"][0]["function"]["name"] == "get_weather" and "cache_control" not in body["tools"][0]
    assert not {"thinking", "output_config", "context_management", "metadata"} & set(body)


async def test_thinking_signatures_round_trip_to_anthropic(stack: Stack) -> None:
    client = make_client(stack)
    question: Any = {"role": "user", "content": "hello there"}
    first = await client.beta.messages.create(model="claude", max_tokens=4096, betas=BETAS,
                                              thinking={"type": "adaptive"}, messages=[question])
    thinking = [block for block in first.content if block.type == "thinking"]
    assert thinking and thinking[0].signature == THINKING_SIGNATURE
    previous: Any = [block.model_dump(exclude_none=True) for block in first.content]
    await client.beta.messages.create(model="claude", max_tokens=4096, betas=BETAS, thinking={"type": "adaptive"},
                                      messages=[question, {"role": "assistant", "content": previous},
                                                {"role": "user", "content": "and again"}])
    sent = stack.anthropic.requests[-1].body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE}


@pytest.mark.parametrize("alias", ["claude", "gem", "oai-chat", "claude-sonnet-4-5-20250929"])
async def test_count_tokens_answers_for_every_alias(stack: Stack, alias: str) -> None:
    client = make_client(stack)
    counted = await client.beta.messages.count_tokens(model=alias, betas=BETAS, system=FIELDS["system"],
                                                      messages=FIELDS["messages"], tools=[TOOL],
                                                      thinking=FIELDS["thinking"])
    assert counted.input_tokens > 0
    if alias.startswith("claude"):
        sent = stack.anthropic.requests[-1]
        assert sent.path == "/v1/messages/count_tokens" and sent.headers["anthropic-beta"].startswith(",".join(BETAS))
        assert sent.body["messages"][1]["role"] == "system" and sent.body["thinking"] == FIELDS["thinking"]


WEB_SEARCH: Any = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_server_tool_is_left_out_and_named_where_only_anthropic_has_it(
        stack: Stack, stream: bool) -> None:
    client = make_client(stack)
    fields = {**FIELDS, "tools": [TOOL, WEB_SEARCH]}
    for alias in ("gem", "oai-chat"):
        raw = await client.beta.messages.with_raw_response.create(
            model=alias, max_tokens=4096, betas=BETAS, stream=stream, **fields)
        headers = raw.headers
        parsed = await raw.parse()
        if stream:
            assert [event.type async for event in parsed][-1] == "message_stop"
        else:
            assert parsed.content[-1].type == "text"
        assert headers["x-truckllm-dropped-tools"] == "web_search_20250305", alias
    assert [d["name"] for d in stack.gemini.requests[-1].body["tools"][0]["functionDeclarations"]] == ["get_weather"]
    raw = await client.beta.messages.with_raw_response.create(
        model="claude", max_tokens=4096, betas=BETAS, **fields)
    assert "x-truckllm-dropped-tools" not in raw.headers          # Anthropic runs it itself
    assert stack.anthropic.requests[-1].body["tools"] == [TOOL, WEB_SEARCH]
