"""End to end: the real `anthropic` SDK on TruckLLM's /v1/messages, natively to the fake
Anthropic upstream and translated to the fake Gemini and Azure upstreams and the mock."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from tests.fakes.anthropic_fake import error_event, overload_after_start_reply, overloaded_reply
from tests.fakes.wire_fake import Reply, sse
from tests.harness import CLIENT_KEY, TLS, Stack, imported_on_first_use

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = imported_on_first_use("anthropic")

ALIASES = ["claude", "gem", "az", "oai-chat"]     # oai-chat: an `openai`-type provider
WEATHER: Any = {"name": "get_weather", "description": "Current weather for a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def make_client(stack: Stack) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=stack.root, api_key=CLIENT_KEY, max_retries=0, timeout=10,
                                      http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS))
    stack.clients.append(client)
    return client


@pytest.mark.parametrize("alias", [*ALIASES, "demo"])
async def test_messages_answer_in_anthropic_shape(stack: Stack, alias: str) -> None:
    client = make_client(stack)
    message = await client.messages.create(model=alias, max_tokens=100, system="Be brief.",
                                           messages=[{"role": "user", "content": "hello there"}])
    assert message.model == alias and message.role == "assistant"
    assert message.stop_reason == "end_turn"
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text if alias == "demo" else text == "Fake reply to: hello there"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_anthropic_upstream_is_passed_through_natively(stack: Stack) -> None:
    client = make_client(stack)
    await client.messages.create(model="claude", max_tokens=64, extra_body={"top_k": 5},
                                 messages=[{"role": "user", "content": "hi"}])
    sent = stack.anthropic.requests[-1].body
    assert sent == {"model": "claude-sonnet-4-5", "max_tokens": 64, "top_k": 5,
                    "messages": [{"role": "user", "content": "hi"}]}


async def test_native_pass_through_forwards_anthropic_beta(stack: Stack) -> None:
    client = make_client(stack)
    await client.messages.create(model="claude", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
                                 extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    headers = stack.anthropic.requests[-1].headers
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert headers["x-api-key"] != CLIENT_KEY                  # the gateway's key, never the client's


@pytest.mark.parametrize("alias", ALIASES)
async def test_stream_helper_accumulates_text(stack: Stack, alias: str) -> None:
    client = make_client(stack)
    async with client.messages.stream(model=alias, max_tokens=100,
                                      messages=[{"role": "user", "content": "tell me a story"}]) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) >= 2 and "".join(pieces) == "Fake reply to: tell me a story"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0 and final.usage.input_tokens > 0


@pytest.mark.parametrize("alias", ALIASES)
async def test_stream_helper_accumulates_parallel_tool_use(stack: Stack, alias: str) -> None:
    client = make_client(stack)
    async with client.messages.stream(model=alias, max_tokens=200, tools=[WEATHER],
                                      messages=[{"role": "user", "content": "weather in Paris and Rome?"}]) as stream:
        final = await stream.get_final_message()
    calls = [(block.name, block.input) for block in final.content if block.type == "tool_use"]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("alias", ALIASES)
async def test_tool_loop_through_messages(stack: Stack, alias: str) -> None:
    client = make_client(stack)
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.messages.create(model=alias, max_tokens=200, tools=[WEATHER], messages=messages)
    tool_use = next(block for block in first.content if block.type == "tool_use")
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                               "content": "18C and sunny"}]}]
    second = await client.messages.create(model=alias, max_tokens=200, tools=[WEATHER], messages=messages)
    text = "".join(block.text for block in second.content if block.type == "text")
    assert "18C and sunny" in text


async def test_sync_client(stack: Stack) -> None:
    def use_sync_client() -> str:
        client = anthropic.Anthropic(base_url=stack.root, api_key=CLIENT_KEY, max_retries=0, timeout=10)
        try:
            with client.messages.stream(model="gem", max_tokens=50,
                                        messages=[{"role": "user", "content": "sync"}]) as stream:
                return "".join(stream.text_stream)
        finally:
            client.close()

    assert await asyncio.to_thread(use_sync_client) == "Fake reply to: sync"


async def test_errors_come_back_in_anthropic_shape(stack: Stack) -> None:
    client = make_client(stack)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                             "message": "The model 'nope' does not exist."}}
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="claude", max_tokens="many",  # type: ignore[arg-type]
                                     messages=[{"role": "user", "content": "x"}])
    unauthorised = anthropic.AsyncAnthropic(base_url=stack.root, api_key="wrong", max_retries=0, timeout=10)
    stack.clients.append(unauthorised)
    with pytest.raises(anthropic.AuthenticationError):
        await unauthorised.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}])


async def test_upstream_overload_is_an_anthropic_error(stack: Stack) -> None:
    stack.anthropic.script(*[overloaded_reply()] * 3)    # every attempt (routing.max_attempts)
    client = make_client(stack)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await client.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code >= 500
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "error"


async def test_error_mid_stream_raises_in_the_sdk(stack: Stack) -> None:
    start = {"type": "message_start", "message": {"id": "msg_x", "type": "message", "role": "assistant",
             "model": "m", "content": [], "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
    events = [sse(start, "message_start"),
              sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                  "content_block_start"),
              sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Part"}},
                  "content_block_delta"),
              error_event()]
    stack.anthropic.script(Reply(events=events))
    client = make_client(stack)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async with client.messages.stream(model="claude", max_tokens=10,
                                          messages=[{"role": "user", "content": "x"}]) as stream:
            async for text in stream.text_stream:
                received.append(text)
    assert received == ["Part"]


async def test_native_stream_error_before_content_falls_back(stack: Stack) -> None:
    stack.anthropic.script(overload_after_start_reply())
    client = make_client(stack)
    async with client.messages.stream(model="claude-or-gem", max_tokens=20,
                                      messages=[{"role": "user", "content": "hello"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "Fake reply to: hello"
    assert len(stack.gemini.requests) == 1


async def test_count_tokens_passes_through_to_an_anthropic_upstream(stack: Stack) -> None:
    client = make_client(stack)
    counted = await client.messages.count_tokens(model="claude", system="Be brief.", tools=[WEATHER],
                                                 messages=[{"role": "user", "content": "hello there"}])
    assert counted.input_tokens > 10
    sent = stack.anthropic.requests[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-sonnet-4-5"
    assert sent.body["tools"] == [WEATHER] and sent.headers["x-api-key"] != CLIENT_KEY


async def test_count_tokens_elsewhere_is_estimated_and_marked(stack: Stack) -> None:
    """No upstream to ask: the gateway estimates (characters / 4, keys included: role 4 +
    user 4 + content 7 + the text), says so in a header, and calls nobody."""
    client = make_client(stack)
    raw = await client.messages.with_raw_response.count_tokens(
        model="gem", messages=[{"role": "user", "content": "x" * 41}])
    assert (await raw.parse()).input_tokens == (4 + 4 + 7 + 41 + 3) // 4
    assert raw.headers["x-truckllm-estimated"] == "true"
    assert raw.headers["x-truckllm-attempts"] == "0"
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        await client.messages.count_tokens(model="gem", messages="not a list")  # type: ignore[arg-type]
    assert stack.gemini.requests == []


@pytest.mark.parametrize("alias", ["gem", "az"])
async def test_images_in_a_tool_result_are_not_lost(stack: Stack, alias: str) -> None:
    client = make_client(stack)
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    await client.messages.create(model=alias, max_tokens=50, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "radar attached"}, {"type": "image", "source": png}]}]}])
    sent = (stack.gemini if alias == "gem" else stack.azure).requests[-1].body
    if alias == "gem":
        parts = sent["contents"][-1]["parts"]
        assert parts[0]["functionResponse"]["response"] == {"output": "radar attached"}
        assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    else:
        assert sent["messages"][-2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "radar attached"}
        assert sent["messages"][-1]["content"] == [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
