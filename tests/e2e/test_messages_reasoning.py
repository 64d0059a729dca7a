"""End to end: thinking blocks on /v1/messages with the real `anthropic` SDK, as Claude Code
keeps them (every content block of an answer sent back on the next turn). An Anthropic
thinking block in the history of an alias served through chat (Gemini, OpenAI-type) is
left out rather than refused; a Gemini turn's thought signature comes back to Claude Code
sealed in a thinking block's signature and goes back to Gemini on the next turn; and such
a block is left out when the conversation moves to Anthropic, which would refuse it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.fakes.anthropic_fake import THINKING_SIGNATURE
from tests.fakes.gemini_fake import SIGNATURE, TEXT_SIGNATURE
from tests.harness import CLIENT_KEY, TLS, Stack, imported_on_first_use

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = imported_on_first_use("anthropic")

THINKING: Any = {"type": "enabled", "budget_tokens": 2048}
QUESTION: Any = {"role": "user", "content": "hello there"}
WEATHER: Any = {"name": "get_weather", "description": "Current weather for a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def make_client(stack: Stack) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=stack.root, api_key=CLIENT_KEY, max_retries=0, timeout=10,
                                      http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS))
    stack.clients.append(client)
    return client


async def _answer(stack: Stack, alias: str, messages: list[Any], stream: bool, **fields: Any) -> list[Any]:
    """The answer's content blocks, as Claude Code keeps them to send back."""
    client = make_client(stack)
    if stream:
        async with client.messages.stream(model=alias, max_tokens=4096, messages=messages, **fields) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(model=alias, max_tokens=4096, messages=messages, **fields)
    return [block.model_dump(exclude_none=True) for block in message.content]


@pytest.mark.parametrize("alias", ["gem", "oai-chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_anthropic_thinking_in_the_history_is_left_out_where_it_means_nothing(
        stack: Stack, alias: str, stream: bool) -> None:
    claude = await _answer(stack, "claude", [QUESTION], False, thinking=THINKING)
    assert claude[0] == {"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE}
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
    history = [QUESTION, {"role": "assistant", "content": [redacted, *claude]},
               {"role": "user", "content": "and again"}]
    answer = await _answer(stack, alias, history, stream, thinking=THINKING)
    assert [b["text"] for b in answer if b["type"] == "text"] == ["Fake reply to: and again"]
    if alias == "gem":
        model_turn = stack.gemini.requests[-1].body["contents"][1]
        assert model_turn == {"role": "model", "parts": [{"text": "Fake reply to: hello there"}]}
    else:
        sent = stack.azure.requests[-1].body["messages"][1]
        assert sent == {"role": "assistant", "content": "Fake reply to: hello there"}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_gemini_thought_signature_rides_in_a_thinking_block(stack: Stack, stream: bool) -> None:
    first = await _answer(stack, "gem", [QUESTION], stream, thinking=THINKING)
    thinking = [b for b in first if b["type"] == "thinking"]
    assert len(thinking) == 1 and thinking[0]["signature"].startswith("tkr1.")
    assert TEXT_SIGNATURE not in str(first), "sealed, not shown as it is"
    history = [QUESTION, {"role": "assistant", "content": first}, {"role": "user", "content": "and again"}]
    await _answer(stack, "gem", history, stream, thinking=THINKING)
    model_turn = stack.gemini.requests[-1].body["contents"][1]
    assert model_turn == {"role": "model", "parts": [{"text": "Fake reply to: hello there",
                                                      "thoughtSignature": TEXT_SIGNATURE}]}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_gemini_tool_loop_keeps_its_signatures(stack: Stack, stream: bool) -> None:
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    first = await _answer(stack, "gem", [question], stream, thinking=THINKING, tools=[WEATHER])
    call = next(b for b in first if b["type"] == "tool_use")
    result: Any = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "rain"}]}
    second = await _answer(stack, "gem", [question, {"role": "assistant", "content": first}, result], stream,
                           thinking=THINKING, tools=[WEATHER])
    assert [b["text"] for b in second if b["type"] == "text"] == ["Tool said: {'output': 'rain'}"]
    history = [question, {"role": "assistant", "content": first}, result,
               {"role": "assistant", "content": second}, {"role": "user", "content": "thanks"}]
    await _answer(stack, "gem", history, stream, thinking=THINKING, tools=[WEATHER])
    turns = [c["parts"] for c in stack.gemini.requests[-1].body["contents"] if c["role"] == "model"]
    assert turns[0][0]["thoughtSignature"] == SIGNATURE
    assert turns[1] == [{"text": "Tool said: {'output': 'rain'}", "thoughtSignature": TEXT_SIGNATURE}]


async def test_a_sealed_thinking_block_is_left_out_on_the_way_to_anthropic(stack: Stack) -> None:
    gemini = await _answer(stack, "gem", [QUESTION], False, thinking=THINKING)
    assert gemini[0]["type"] == "thinking"
    history = [QUESTION, {"role": "assistant", "content": gemini}, {"role": "user", "content": "and again"}]
    answer = await _answer(stack, "claude", history, False, thinking=THINKING)
    assert [b["text"] for b in answer if b["type"] == "text"] == ["Fake reply to: and again"]
    sent = stack.anthropic.requests[-1].body["messages"][1]
    assert sent == {"role": "assistant", "content": [{"type": "text", "text": "Fake reply to: hello there"}]}
