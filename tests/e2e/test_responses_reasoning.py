"""End to end: reasoning across stateless turns with the official `openai` SDK's Responses
API, as Codex runs it (`store: false`, `include: ["reasoning.encrypted_content"]`, the
whole conversation sent each turn), on aliases served by the fake Anthropic and Gemini
upstreams. The Anthropic fake refuses, as the real API does, a tool-use turn sent back
without its signed thinking block while thinking is on; the tests also check what each
upstream received on turn two. And a plain chat completions client sees no reasoning."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.anthropic_fake import THINKING_SIGNATURE
from tests.fakes.gemini_fake import SIGNATURE, TEXT_SIGNATURE, THOUGHT
from tests.harness import Stack, make_openai_client

WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
CODEX_LIKE: Any = {"tools": [WEATHER], "store": False, "include": ["reasoning.encrypted_content"],
                   "reasoning": {"effort": "low", "summary": "auto"}}
QUESTION = "What is the weather in Paris?"


async def _first_turn(stack: Stack, alias: str, stream: bool, **settings: Any) -> list[Any]:
    """Turn one's output items, as the client keeps them to send back."""
    client = make_openai_client(stack)
    if stream:
        async with client.responses.stream(model=alias, input=QUESTION, **settings) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(model=alias, input=QUESTION, **settings)
    return [item.model_dump(exclude_none=True) for item in response.output]


async def _second_turn(stack: Stack, alias: str, output: list[Any], stream: bool, **settings: Any) -> str:
    client = make_openai_client(stack)
    call = next(item for item in output if item["type"] == "function_call")
    history = [{"role": "user", "content": QUESTION}, *output,
               {"type": "function_call_output", "call_id": call["call_id"], "output": "rain"}]
    if stream:
        async with client.responses.stream(model=alias, input=history, **settings) as events:
            return (await events.get_final_response()).output_text
    return (await client.responses.create(model=alias, input=history, **settings)).output_text


def _assistant_turn(body: dict[str, Any]) -> list[dict[str, Any]]:
    turn = [m for m in body["messages"] if m["role"] == "assistant"][-1]
    content: list[dict[str, Any]] = turn["content"]
    return content


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_anthropic_thinking_survives_a_stateless_tool_loop(stack: Stack, stream: bool) -> None:
    output = await _first_turn(stack, "claude", stream, **CODEX_LIKE)
    reasoning = output[0]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert reasoning["encrypted_content"] and THINKING_SIGNATURE not in reasoning["encrypted_content"]
    first = stack.anthropic.requests[-1].body
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert first["max_tokens"] > 1024

    answer = await _second_turn(stack, "claude", output, stream, **CODEX_LIKE)
    assert answer == "Tool said: rain"
    sent = stack.anthropic.requests[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    turn = _assistant_turn(sent)
    assert [b["type"] for b in turn] == ["thinking", "text", "tool_use"], "the signed thinking block first"
    assert turn[0] == {"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE}


async def test_without_encrypted_content_the_loop_goes_on_without_thinking(stack: Stack) -> None:
    settings = {**CODEX_LIKE, "include": []}
    output = await _first_turn(stack, "claude", False, **settings)
    assert output[0]["type"] == "reasoning" and "encrypted_content" not in output[0]
    assert await _second_turn(stack, "claude", output, False, **settings) == "Tool said: rain"
    sent = stack.anthropic.requests[-1].body
    assert "thinking" not in sent and [b["type"] for b in _assistant_turn(sent)] == ["text", "tool_use"]


@pytest.mark.parametrize("content", ["tkr1.bm90IHNlYWxlZA==", "tkr1.%%%", "gAAAAB-opaque", ""])
async def test_unknown_encrypted_content_is_dropped(stack: Stack, content: str) -> None:
    output = await _first_turn(stack, "claude", False, **CODEX_LIKE)
    output[0]["encrypted_content"] = content
    assert await _second_turn(stack, "claude", output, False, **CODEX_LIKE) == "Tool said: rain"
    assert "thinking" not in stack.anthropic.requests[-1].body


async def test_sealed_content_cannot_be_edited(stack: Stack) -> None:
    output = await _first_turn(stack, "claude", False, **CODEX_LIKE)
    sealed: str = output[0]["encrypted_content"]
    output[0]["encrypted_content"] = sealed[:-6] + ("AAAAAA" if not sealed.endswith("AAAAAA") else "BBBBBB")
    assert await _second_turn(stack, "claude", output, False, **CODEX_LIKE) == "Tool said: rain"
    assert all(b["type"] != "thinking" for b in _assistant_turn(stack.anthropic.requests[-1].body))


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_gemini_thoughts_and_signature_across_a_stateless_tool_loop(stack: Stack, stream: bool) -> None:
    output = await _first_turn(stack, "gem", stream, **CODEX_LIKE)
    assert output[0]["type"] == "reasoning"
    assert output[0]["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    first = stack.gemini.requests[-1].body
    assert first["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}
    assert await _second_turn(stack, "gem", output, stream, **CODEX_LIKE) == "Tool said: {'output': 'rain'}"
    model_turn = [c for c in stack.gemini.requests[-1].body["contents"] if c["role"] == "model"][-1]
    assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE
    assert all("thought" not in part for part in model_turn["parts"]), "thought summaries are not sent back"


async def test_plain_chat_clients_see_no_reasoning(stack: Stack) -> None:
    client = make_openai_client(stack)
    answer = await client.chat.completions.create(
        model="claude", reasoning_effort="medium", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "Fake reply to: hello"
    extra = answer.choices[0].message.model_extra or {}
    assert "reasoning_content" not in extra and "reasoning_state" not in extra
    assert stack.anthropic.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    chunks = [chunk async for chunk in await client.chat.completions.create(
        model="claude", reasoning_effort="medium", stream=True,
        messages=[{"role": "user", "content": "hello"}])]
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks if c.choices]
    assert all("reasoning_content" not in d and "reasoning_state" not in d for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == "Fake reply to: hello"


STATEFUL: Any = {"tools": [WEATHER], "reasoning": {"effort": "low", "summary": "auto"}}


async def _stateful_loop(stack: Stack, alias: str, stream: bool) -> tuple[Any, str]:
    """Turn one stored (no `include`), turn two by `previous_response_id`: turn one's
    response as the client saw it, and turn two's answer."""
    client = make_openai_client(stack)
    if stream:
        async with client.responses.stream(model=alias, input=QUESTION, **STATEFUL) as events:
            first = await events.get_final_response()
    else:
        first = await client.responses.create(model=alias, input=QUESTION, **STATEFUL)
    call = next(item for item in first.output if item.type == "function_call")
    follow_up: Any = {"model": alias, "previous_response_id": first.id, **STATEFUL,
                      "input": [{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}]}
    if stream:
        async with client.responses.stream(**follow_up) as events:
            return first, (await events.get_final_response()).output_text
    return first, (await client.responses.create(**follow_up)).output_text


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_stored_response_keeps_anthropic_thinking_for_its_follow_up(stack: Stack, stream: bool) -> None:
    first, answer = await _stateful_loop(stack, "claude", stream)
    shown = [item.model_dump(exclude_none=True) for item in first.output]
    assert shown[0]["type"] == "reasoning" and "encrypted_content" not in shown[0], "not asked for"
    assert answer == "Tool said: rain"
    sent = stack.anthropic.requests[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    turn = _assistant_turn(sent)
    assert [b["type"] for b in turn] == ["thinking", "text", "tool_use"]
    assert turn[0] == {"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE}


async def test_a_stored_response_shows_encrypted_content_only_when_asked(stack: Stack) -> None:
    client = make_openai_client(stack)
    first = await client.responses.create(model="claude", input=QUESTION, **STATEFUL)
    again = await client.responses.retrieve(first.id)
    assert again.output[0].type == "reasoning" and again.output[0].encrypted_content is None
    asked = await client.responses.retrieve(first.id, include=["reasoning.encrypted_content"])
    sealed = asked.output[0].encrypted_content
    assert asked.output[0].type == "reasoning" and sealed and THINKING_SIGNATURE not in sealed
    call = next(item for item in first.output if item.type == "function_call")
    second = await client.responses.create(
        model="claude", previous_response_id=first.id, **STATEFUL,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    listed = [item.model_dump(exclude_none=True) for item in
              (await client.responses.input_items.list(second.id, order="asc")).data]
    assert [item["type"] for item in listed][:2] == ["message", "reasoning"]
    assert all("encrypted_content" not in item for item in listed)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_stored_response_keeps_gemini_signatures_for_its_follow_up(stack: Stack, stream: bool) -> None:
    _, answer = await _stateful_loop(stack, "gem", stream)
    assert answer == "Tool said: {'output': 'rain'}"
    model_turn = [c for c in stack.gemini.requests[-1].body["contents"] if c["role"] == "model"][-1]
    assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE


def _last_model_turn(stack: Stack) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [c for c in stack.gemini.requests[-1].body["contents"]
                                   if c["role"] == "model"][-1]["parts"]
    return parts


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_gemini_text_signature_comes_back_on_a_stateless_turn(stack: Stack, stream: bool) -> None:
    settings = {**CODEX_LIKE, "tools": []}
    output = await _first_turn(stack, "gem", stream, **settings)
    assert all(TEXT_SIGNATURE not in str(item) for item in output), "sealed, not shown as it is"
    client = make_openai_client(stack)
    history = [{"role": "user", "content": "Hello there"}, *output, {"role": "user", "content": "And then?"}]
    await client.responses.create(model="gem", input=history, **settings)
    assert _last_model_turn(stack) == [{"text": "Fake reply to: " + QUESTION, "thoughtSignature": TEXT_SIGNATURE}]


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_gemini_text_signature_comes_back_on_a_stored_turn(stack: Stack, stream: bool) -> None:
    client = make_openai_client(stack)
    settings = {"reasoning": {"effort": "low"}}
    if stream:
        async with client.responses.stream(model="gem", input=QUESTION, **settings) as events:
            first = await events.get_final_response()
    else:
        first = await client.responses.create(model="gem", input=QUESTION, **settings)
    assert first.output_text == "Fake reply to: " + QUESTION
    assert all(item.type != "reasoning" or item.encrypted_content is None for item in first.output)
    await client.responses.create(model="gem", input="And then?", previous_response_id=first.id, **settings)
    assert _last_model_turn(stack) == [{"text": "Fake reply to: " + QUESTION, "thoughtSignature": TEXT_SIGNATURE}]


async def test_a_gemini_text_signature_goes_back_after_a_tool_loop(stack: Stack) -> None:
    output = await _first_turn(stack, "gem", True, **CODEX_LIKE)
    client = make_openai_client(stack)
    call = next(item for item in output if item["type"] == "function_call")
    history = [{"role": "user", "content": QUESTION}, *output,
               {"type": "function_call_output", "call_id": call["call_id"], "output": "rain"}]
    async with client.responses.stream(model="gem", input=history, **CODEX_LIKE) as events:
        second = await events.get_final_response()
    history += [item.model_dump(exclude_none=True) for item in second.output]
    await client.responses.create(model="gem", input=[*history, {"role": "user", "content": "Thanks"}],
                                  **CODEX_LIKE)
    turns = [c["parts"] for c in stack.gemini.requests[-1].body["contents"] if c["role"] == "model"]
    assert turns[0][0]["thoughtSignature"] == SIGNATURE
    assert turns[-1] == [{"text": "Tool said: {'output': 'rain'}", "thoughtSignature": TEXT_SIGNATURE}]
