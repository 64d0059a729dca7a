"""End to end: the real `openai` SDK, through the real TruckLLM app, to fake Anthropic,
Gemini and Azure servers that speak the real wire formats."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.fakes.anthropic_fake import error_event, overload_after_start_reply, overloaded_reply
from tests.fakes.gemini_fake import SIGNATURE
from tests.fakes.wire_fake import Reply, sse
from tests.harness import CLIENT_KEY, UPSTREAM_KEYS, Stack, make_openai_client
from truckllm.providers.gemini import SIGNATURE_MARK

CHAT_ALIASES = ["claude", "gem", "az", "az-v1"]
WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def upstream_of(stack: Stack, alias: str) -> Any:
    return {"claude": stack.anthropic, "gem": stack.gemini}.get(alias, stack.azure)


@pytest.mark.parametrize("alias", CHAT_ALIASES)
async def test_chat_answers_in_openai_shape(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    answer = await client.chat.completions.create(
        model=alias, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}])
    assert answer.model == alias
    assert answer.choices[0].message.content == "Fake reply to: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


@pytest.mark.parametrize("alias", CHAT_ALIASES)
async def test_stream_has_role_first_and_one_usage_chunk_last(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(
        model=alias, messages=[{"role": "user", "content": "tell me a story please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) >= 4, "streamed in several chunks, not collapsed into one"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake reply to: tell me a story please"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert [c for c in chunks if c.usage is not None] == [chunks[-1]] and chunks[-1].choices == []
    assert all(c.model == alias for c in chunks)


@pytest.mark.parametrize("alias", CHAT_ALIASES)
async def test_stream_without_include_usage_has_no_usage_chunk(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(
        model=alias, messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("alias", CHAT_ALIASES)
async def test_streaming_helper_accumulates_parallel_tool_calls(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    async with client.chat.completions.stream(
        model=alias, messages=[{"role": "user", "content": "weather in Paris and Rome?"}], tools=[WEATHER_TOOL],
    ) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert len({c.id for c in message.tool_calls}) == 2


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_tool_loop_sends_results_back_in_the_upstream_format(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.chat.completions.create(model=alias, messages=messages, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = await client.chat.completions.create(model=alias, messages=messages, tools=[WEATHER_TOOL])
    assert "18C and sunny" in (second.choices[0].message.content or "")
    sent = upstream_of(stack, alias).requests[-1].body
    if alias == "claude":
        assert sent["messages"][-1]["content"][0] == {"type": "tool_result", "tool_use_id": call.id,
                                                      "content": "18C and sunny"}
    elif alias == "gem":
        model_turn, result_turn = sent["contents"][-2], sent["contents"][-1]
        assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE, "thought signature restored"
        assert result_turn["parts"][0]["functionResponse"] == {"name": "get_weather",
                                                               "response": {"output": "18C and sunny"}}
    else:
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}


async def test_sync_client_stream_and_not(stack: Stack) -> None:
    def use_sync_client() -> tuple[str, str]:
        client = OpenAI(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, timeout=10)
        answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "one"}])
        stream = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "two"}],
                                                stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return answer.choices[0].message.content or "", text

    assert await asyncio.to_thread(use_sync_client) == ("Fake reply to: one", "Fake reply to: two")


@pytest.mark.parametrize("alias", ["gem-embed", "az-embed"])
async def test_embeddings_through_the_sdk_default_base64(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    result = await client.embeddings.create(model=alias, input=["first", "second"])   # SDK asks base64
    assert [d.index for d in result.data] == [0, 1]
    assert all(isinstance(v, float) for v in result.data[0].embedding)
    assert result.model == alias and result.usage.prompt_tokens > 0
    floats = await client.embeddings.create(model=alias, input="solo", encoding_format="float")
    assert len(floats.data) == 1 and floats.data[0].embedding


async def test_gemini_embeddings_decode_to_the_upstream_values(stack: Stack) -> None:
    client = make_openai_client(stack)
    result = await client.embeddings.create(model="gem-embed", input="same text", dimensions=4)
    raw = await client.embeddings.create(model="gem-embed", input="same text", dimensions=4, encoding_format="float")
    assert result.data[0].embedding == pytest.approx(raw.data[0].embedding, rel=1e-6)
    assert stack.gemini.requests[-1].path.endswith(":embedContent")
    assert stack.gemini.requests[-1].body["outputDimensionality"] == 4


@pytest.mark.parametrize("alias", ["claude", "gem"])
async def test_completions_are_answered_through_chat(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    answer = await client.completions.create(model=alias, prompt="say something", max_tokens=20)
    assert answer.object == "text_completion" and answer.choices[0].text == "Fake reply to: say something"
    stream = await client.completions.create(model=alias, prompt="say more", max_tokens=20, stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Fake reply to: say more"


async def test_upstream_auth_headers_and_no_client_key_upstream(stack: Stack) -> None:
    client = make_openai_client(stack)
    for alias in ("claude", "gem", "az"):
        await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}])
    anthropic_headers = stack.anthropic.requests[-1].headers
    assert anthropic_headers["x-api-key"] == UPSTREAM_KEYS["claude"]
    assert anthropic_headers["anthropic-version"] == "2023-06-01"
    assert stack.gemini.requests[-1].headers["x-goog-api-key"] == UPSTREAM_KEYS["google"]
    azure = stack.azure.requests[-1]
    assert azure.headers["api-key"] == UPSTREAM_KEYS["az"] and azure.query["api-version"] == "2024-10-21"
    assert azure.path == "/openai/deployments/gpt4o-deploy/chat/completions"
    for fake in (stack.anthropic, stack.gemini, stack.azure):
        assert all(CLIENT_KEY not in json.dumps(dict(r.headers)) for r in fake.requests)


async def test_upstream_overload_before_the_stream_is_an_openai_error(stack: Stack) -> None:
    stack.anthropic.script(*[overloaded_reply()] * 3)    # every attempt (routing.max_attempts)
    client = make_openai_client(stack)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], stream=True)
    assert raised.value.status_code == 503                 # Anthropic 529 -> 503 overloaded_error
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "overloaded_error"


async def test_upstream_overload_without_streaming_is_a_503(stack: Stack) -> None:
    stack.anthropic.script(*[overloaded_reply()] * 3)
    client = make_openai_client(stack)
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 503
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "overloaded_error"


async def test_upstream_client_error_keeps_its_status_and_message(stack: Stack) -> None:
    stack.anthropic.script(Reply(status=400, body={"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 215000 tokens > 200000 maximum"}}))
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert "prompt is too long" in raised.value.message
    assert raised.value.code == "context_length_exceeded"


async def test_error_mid_stream_reaches_the_sdk_after_the_text(stack: Stack) -> None:
    start = {"type": "message_start", "message": {"id": "msg_x", "type": "message", "role": "assistant",
             "model": "m", "content": [], "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
    events = [sse(start, "message_start"),
              sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                  "content_block_start"),
              sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Partial"}},
                  "content_block_delta"),
              error_event()]
    stack.anthropic.script(Reply(events=events))
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="Overloaded"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Partial"


async def test_gemini_stream_cut_short_is_an_error_not_a_stop(stack: Stack) -> None:
    chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Half"}]}, "index": 0}]}
    stack.gemini.script(Reply(events=[sse(chunk)]))
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    with pytest.raises(openai.APIError, match="finishReason"):
        async for _ in stream:
            pass


async def test_refused_feature_is_a_clear_400(stack: Stack) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], n=2)
    assert raised.value.param == "n" and raised.value.code == "unsupported_parameter"
    assert stack.anthropic.requests == [], "refused before anything went upstream"


async def test_error_event_before_any_content_falls_back_to_the_next_target(stack: Stack) -> None:
    stack.anthropic.script(overload_after_start_reply())
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(model="claude-or-gem", stream=True,
                                                  messages=[{"role": "user", "content": "hello"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Fake reply to: hello"
    assert len(stack.anthropic.requests) == 1 and len(stack.gemini.requests) == 1


@pytest.mark.parametrize("alias", ["oai-chat", "az"])
async def test_a_gemini_tool_history_continues_on_openai_with_short_ids(stack: Stack, alias: str) -> None:
    """Gemini's tool-call ids carry its thought signature (hundreds of characters, far over
    OpenAI's 40); a conversation that moves to an OpenAI-compatible upstream (a fallback,
    or the client switching models) must still be accepted, its call and result matched."""
    long_id = "call_resp-7_0" + SIGNATURE_MARK + "Cs8BAdHtim9" * 40
    messages: list[Any] = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": long_id, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": long_id, "content": "18C and sunny"},
    ]
    answer = await make_openai_client(stack).chat.completions.create(
        model=alias, messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content
    sent = stack.azure.requests[-1].body["messages"]
    sent_call_id, sent_result_id = sent[1]["tool_calls"][0]["id"], sent[2]["tool_call_id"]
    assert sent_call_id == sent_result_id and len(sent_call_id) <= 40
    assert sent[2]["content"] == "18C and sunny" and sent[0] == messages[0]
    assert sent[1]["tool_calls"][0]["function"] == messages[1]["tool_calls"][0]["function"]
