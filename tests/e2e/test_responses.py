"""End to end: the official `openai` SDK's Responses API (`responses.create`,
`responses.stream()`, the tool loop with `previous_response_id`, retrieve/delete/input
items) on TruckLLM's /v1/responses, translated through chat to the fake Anthropic, Gemini
and Azure upstreams and the mock."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from tests.fakes.anthropic_fake import error_event, overload_after_start_reply
from tests.fakes.wire_fake import Reply, sse
from tests.harness import CLIENT_KEY, Stack, make_openai_client

ALIASES = ["claude", "gem", "az", "oai-chat"]
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}


@pytest.mark.parametrize("alias", [*ALIASES, "demo"])
async def test_create_answers_a_response_object(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    response = await client.responses.create(model=alias, instructions="Be brief.", input="hello there")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == alias
    assert response.output_text if alias == "demo" else response.output_text == "Fake reply to: hello there"
    assert response.usage is not None and response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


@pytest.mark.parametrize("alias", ALIASES)
async def test_stream_helper_gets_the_event_sequence(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    async with client.responses.stream(model=alias, input="hello there") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert final.output_text == "Fake reply to: hello there" and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0


@pytest.mark.parametrize("alias", ALIASES)
async def test_tool_loop_with_previous_response_id(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    first = await client.responses.create(model=alias, input="What is the weather in Paris?",
                                          tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert calls[0].arguments and '"Paris"' in calls[0].arguments
    second = await client.responses.create(
        model=alias, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}])
    assert second.output_text.startswith("Tool said:") and "sunny, 21C" in second.output_text
    assert second.previous_response_id == first.id


async def test_stateless_tool_loop_resends_the_items(stack: Stack) -> None:
    client = make_openai_client(stack)
    first = await client.responses.create(model="claude", input="weather in Paris?", tools=[WEATHER],
                                          store=False)
    call = next(item for item in first.output if item.type == "function_call")
    history: list[Any] = [{"role": "user", "content": "weather in Paris?"},
                          *[item.model_dump(exclude_none=True) for item in first.output],
                          {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}]
    second = await client.responses.create(model="claude", input=history, tools=[WEATHER], store=False)
    assert second.output_text == "Tool said: rain"
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)       # store=False kept nothing


async def test_unknown_previous_response_id_is_refused(stack: Stack) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="claude", input="hi", previous_response_id="resp_nope")
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "previous_response_id" and error["code"] == "previous_response_not_found"


async def test_retrieve_input_items_and_delete(stack: Stack) -> None:
    client = make_openai_client(stack)
    created = await client.responses.create(model="gem", input="hello there")
    fetched = await client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "Fake reply to: hello there"
    items = await client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    deleted = await client.responses.delete(created.id)
    assert deleted is None
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)


async def test_another_key_cannot_see_a_response(stack: Stack) -> None:
    client = make_openai_client(stack)
    created = await client.responses.create(model="gem", input="hello there")
    other = AsyncOpenAI(base_url=stack.url, api_key="tk-other-client-key", max_retries=0, timeout=10)
    stack.clients.append(other)
    with pytest.raises(openai.AuthenticationError):
        await other.responses.retrieve(created.id)


async def test_built_in_tools_are_dropped_and_named(stack: Stack) -> None:
    client = make_openai_client(stack)
    raw = await client.responses.with_raw_response.create(
        model="claude", input="hello there",
        tools=[WEATHER, {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert raw.headers["x-truckllm-dropped-tools"] == "web_search,file_search"
    assert [t["name"] for t in stack.anthropic.requests[-1].body["tools"]] == ["get_weather"]
    assert raw.parse().output_text == "Fake reply to: hello there"


async def test_background_is_refused_on_a_translated_target(stack: Stack) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="claude", input="hi", background=True)
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "background"


async def test_failure_before_output_is_retried(stack: Stack) -> None:
    stack.anthropic.script(overload_after_start_reply())
    client = make_openai_client(stack)
    async with client.responses.stream(model="claude", input="hello there") as stream:
        final = await stream.get_final_response()
    assert final.status == "completed" and final.output_text == "Fake reply to: hello there"


def anthropic_text_begun(text: str) -> list[str]:
    """The first events of an Anthropic stream whose text block has begun with `text`."""
    start = {"type": "message_start", "message": {
        "id": "msg_x", "type": "message", "role": "assistant", "model": "claude", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
    return [
        sse(start, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start"),
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            "content_block_delta"),
    ]


async def test_failure_after_output_ends_with_response_failed(stack: Stack) -> None:
    stack.anthropic.script(Reply(events=[
        *anthropic_text_begun("Hel"),
        error_event()]))
    client = make_openai_client(stack)
    async with client.responses.stream(model="claude", input="hello there") as stream:
        events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert "response.output_text.delta" in kinds
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and "Overloaded" in failed.response.error.message
    assert failed.sequence_number == events[-2].sequence_number + 1


async def test_no_client_key_in_upstream_request(stack: Stack) -> None:
    client = make_openai_client(stack)
    await client.responses.create(model="claude", input="hi")
    assert CLIENT_KEY not in str(stack.anthropic.requests[-1].headers)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "claude"}, "input"),
    ({"model": "claude", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"model": "gem", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": "gem", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "claude", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "claude", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
])
async def test_bad_requests_name_the_field(stack: Stack, body: dict[str, Any], param: str) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/responses", body=body, cast_to=object)
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error" and error["param"] == param


async def test_a_streamed_response_is_kept_in_the_store(stack: Stack) -> None:
    client = make_openai_client(stack)
    async with client.responses.stream(model="claude", input="hello there") as stream:
        final = await stream.get_final_response()
    stored = await client.responses.retrieve(final.id)
    assert stored.status == "completed" and stored.output_text == "Fake reply to: hello there"


async def test_a_failure_after_a_finished_item_reports_and_stores_it(stack: Stack) -> None:
    stack.anthropic.script(Reply(events=[
        *anthropic_text_begun("Let me look."),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}, "content_block_start"),
        error_event()]))
    client = make_openai_client(stack)
    async with client.responses.stream(model="claude", input="weather?", tools=[WEATHER]) as stream:
        events = [event async for event in stream]
    failed = events[-1]
    assert failed.type == "response.failed" and failed.sequence_number == events[-2].sequence_number + 1
    # The message finished before the failure; the tool call still open is left out.
    assert [item.type for item in failed.response.output] == ["message"]
    stored = await client.responses.retrieve(failed.response.id)
    assert stored.status == "failed" and stored.output_text == "Let me look."
