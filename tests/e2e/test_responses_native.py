"""End to end: /v1/responses passed through natively to upstreams that speak the
Responses API (the fake OpenAI and Azure), forced through chat with `responses: chat`,
and learned to be missing from an OpenAI-compatible server that answers 404 there."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_fake import make_openai_fake
from tests.fakes.responses_wire import ResponsesAnswer
from tests.fakes.wire_fake import Reply
from tests.harness import CLIENT_KEY, Stack, make_config, make_gateway, make_openai_client
from truckllm.server.keys import RESPONSES_ENDPOINT_MISSING

WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


async def test_native_upstream_gets_the_body_with_the_model_rewritten(stack: Stack) -> None:
    client = make_openai_client(stack)
    raw = await client.responses.with_raw_response.create(
        model="az", input="hello there", tools=[WEATHER, {"type": "web_search"}],
        include=["reasoning.encrypted_content"], store=False, prompt_cache_key="pk")
    sent = stack.azure.requests[-1]
    assert sent.path == "/openai/v1/responses" and sent.headers.get("api-key")
    assert sent.body == {"model": "gpt4o-deploy", "input": "hello there", "tools": [WEATHER, {"type": "web_search"}],
                         "include": ["reasoning.encrypted_content"], "store": False, "prompt_cache_key": "pk"}
    assert "x-truckllm-dropped-tools" not in raw.headers        # the upstream has web_search
    response = raw.parse()
    assert response.model == "az" and response.output_text == "Fake reply to: hello there"


async def test_native_stream_is_forwarded_without_foreign_events(stack: Stack) -> None:
    client = make_openai_client(stack)
    async with client.responses.stream(model="oai-chat", input="hello there") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert not any(k.startswith("codex.") for k in kinds)
    assert final.model == "oai-chat" and final.output_text == "Fake reply to: hello there"
    assert final.usage is not None and final.usage.input_tokens > 0


async def test_native_tool_loop_resends_the_stored_conversation(stack: Stack) -> None:
    client = make_openai_client(stack)
    first = await client.responses.create(model="az", input="weather in Paris?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    second = await client.responses.create(
        model="az", previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == "Tool said: sunny" and second.previous_response_id == first.id
    sent = stack.azure.requests[-1].body
    assert "previous_response_id" not in sent
    assert [item.get("type") for item in sent["input"]] == ["message", "message", "function_call",
                                                           "function_call_output"]


async def test_responses_chat_setting_translates_through_chat(stack: Stack) -> None:
    client = make_openai_client(stack)
    raw = await client.responses.with_raw_response.create(model="oai-translated", input="hello there",
                                                          tools=[WEATHER, {"type": "web_search"}])
    assert stack.azure.requests[-1].path == "/openai/v1/chat/completions"
    assert raw.headers["x-truckllm-dropped-tools"] == "web_search"
    assert raw.parse().output_text == "Fake reply to: hello there"


async def test_an_upstream_without_responses_is_translated_from_then_on() -> None:
    async with make_openai_fake(responses=False) as fake, make_gateway(make_config(fake.url)) as gateway:
        client = gateway.client()
        first = await client.responses.create(model="gpt", input="hello there")
        assert first.status == "completed" and first.output_text
        # (the fake records only the paths it serves: the 404 left no record)
        assert [r.path for r in fake.requests] == ["/v1/chat/completions"]
        assert gateway.app[RESPONSES_ENDPOINT_MISSING] == {"up"}
        async with client.responses.stream(model="gpt", input="hello again") as stream:
            final = await stream.get_final_response()
        assert final.status == "completed" and final.output_text
        assert [r.path for r in fake.requests][1:] == ["/v1/chat/completions"]
        assert orjson.loads(fake.requests[-1].raw)["stream"] is True


async def test_another_key_gets_404_for_a_stored_response() -> None:
    config = make_config(None, keys=[{"id": "team", "key": CLIENT_KEY}, {"id": "other", "key": "tk-other-000001"}])
    async with make_gateway(config) as gateway:
        created = await gateway.client().responses.create(model="demo", input="hi")
        async with gateway.http() as http:
            for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
                async with http.request(method, f"/v1/responses/{created.id}{path}",
                                        headers={"Authorization": "Bearer tk-other-000001"}) as answer:
                    assert answer.status == 404
                    assert (await answer.json())["error"]["type"] == "not_found_error"
        other: AsyncOpenAI = gateway.client("tk-other-000001")
        with pytest.raises(openai.BadRequestError) as refused:
            await other.responses.create(model="demo", input="more", previous_response_id=created.id)
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "previous_response_not_found"


def spaced_events(answer: ResponsesAnswer, fail_after: int | None = None) -> list[str]:
    """The fake's events as an upstream might space and order them (`json.dumps`,
    sequence_number last), optionally cut by an `error` event after `fail_after` events."""
    out = []
    for framed in answer.events():
        data = json.loads(framed.split("data: ", 1)[1])
        if not data["type"].startswith("response."):
            continue
        number = data.pop("sequence_number")
        out.append(f"event: {data['type']}\ndata: {json.dumps({**data, 'sequence_number': number})}\n\n")
    if fail_after is not None:
        error = ('event: error\ndata: {"type": "error", "code": "server_error", '
                 '"message": "The model crashed.", "sequence_number": 99}\n\n')
        out = [*out[:fail_after], error]
    return out


async def test_native_events_in_another_spacing_reach_the_client(stack: Stack) -> None:
    body = {"model": "gpt4o-deploy", "input": "hello there", "stream": True}
    stack.azure.script(Reply(events=spaced_events(ResponsesAnswer("gpt4o-deploy", body))))
    client = make_openai_client(stack)
    async with client.responses.stream(model="az", input="hello there") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Fake reply to: hello there" and final.model == "az"


async def test_native_error_event_after_output_ends_with_response_failed(stack: Stack) -> None:
    body = {"model": "gpt4o-deploy", "input": "hello there", "stream": True}
    stack.azure.script(Reply(events=spaced_events(ResponsesAnswer("gpt4o-deploy", body), fail_after=5)))
    client = make_openai_client(stack)
    async with client.responses.stream(model="az", input="hello there") as stream:
        events = [event async for event in stream]
    assert events[-1].type == "response.failed" and "crashed" in str(events[-1].response.error)
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers)


async def test_a_follow_up_of_a_native_response_goes_back_to_its_upstream(stack: Stack) -> None:
    client = make_openai_client(stack)
    first = await client.responses.with_raw_response.create(model="native-rr", input="hello there")
    provider = first.headers["x-truckllm-provider"]
    previous = first.parse().id
    for _ in range(3):          # round robin would alternate; the stored response's upstream wins
        follow_up = await client.responses.with_raw_response.create(
            model="native-rr", input="and again", previous_response_id=previous)
        assert follow_up.headers["x-truckllm-provider"] == provider
        previous = follow_up.parse().id
    alone = [(await client.responses.with_raw_response.create(model="native-rr", input="hi")).headers[
        "x-truckllm-provider"] for _ in range(2)]
    assert set(alone) == {"az", "oai"}


async def test_native_failure_after_a_finished_item_reports_and_stores_it(stack: Stack) -> None:
    body = {"model": "gpt4o-deploy", "input": "hello there", "stream": True}
    events = spaced_events(ResponsesAnswer("gpt4o-deploy", body))
    stack.azure.script(Reply(events=spaced_events(ResponsesAnswer("gpt4o-deploy", body),
                                                  fail_after=len(events) - 1)))
    client = make_openai_client(stack)
    async with client.responses.stream(model="az", input="hello there") as stream:
        received = [event async for event in stream]
    failed = received[-1]
    assert received[-2].type == "response.output_item.done"
    assert failed.type == "response.failed" and failed.sequence_number == received[-2].sequence_number + 1
    assert failed.response.model == "az" and failed.response.output_text == "Fake reply to: hello there"
    stored = await client.responses.retrieve(failed.response.id)
    assert stored.status == "failed" and stored.output_text == "Fake reply to: hello there"


def _without_foreign(events: list[str]) -> list[str]:
    return [event for event in events if not event.startswith("event: codex.")]


def _cut_by_error(events: list[str]) -> list[str]:
    error = {"type": "error", "code": "server_error", "message": "The model crashed.", "sequence_number": 99}
    return [*_without_foreign(events)[:5], f"event: error\ndata: {orjson.dumps(error).decode()}\n\n"]


# The upstream's events as a stream might bring them; the first three a read may take whole.
NATIVE_STREAMS = {
    "plain": lambda answer: _without_foreign(answer.events()),
    "tool call": lambda answer: _without_foreign(ResponsesAnswer(
        answer.model, {**answer.body, "input": "weather in Paris?", "tools": [WEATHER]}).events()),
    "error event": lambda answer: _cut_by_error(answer.events()),
    "a foreign event": lambda answer: answer.events(),
    "a nested model": lambda answer: _without_foreign(ResponsesAnswer(answer.model, {
        **answer.body, "tools": [{"type": "image_generation", "model": "gpt-image-1"}]}).events()),
    "spaced": lambda answer: spaced_events(answer),
    "cut short": lambda answer: _without_foreign(answer.events())[:-1],
}


@pytest.mark.parametrize("name", list(NATIVE_STREAMS))
async def test_native_events_read_together_reach_the_client_as_they_do_one_by_one(
        stack: Stack, name: str) -> None:
    """One upstream write (mostly one read of the gateway's, taken whole), the same with
    CRLF line ends (taken event by event) and one write per event: the same bytes."""
    events = NATIVE_STREAMS[name](ResponsesAnswer("gpt4o-deploy", {"model": "gpt4o-deploy",
                                                                   "input": "hello there", "stream": True}))
    together = "".join(events)
    sent = []
    for reply in (Reply(raw=together.encode(), content_type="text/event-stream"),
                  Reply(raw=together.replace("\n", "\r\n").encode(), content_type="text/event-stream"),
                  Reply(events=events)):
        stack.azure.script(reply)
        async with stack.gateway.http() as http:
            response = await http.post("/v1/responses", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                                       json={"model": "az", "input": "hello there", "stream": True})
            assert response.status == 200
            sent.append(await response.read())
    assert sent[0] == sent[1] == sent[2]
    received = [block.split(b"\ndata: ", 1) for block in sent[0].split(b"\n\n") if block]
    kinds = [name.removeprefix(b"event: ").decode() for name, _ in received]
    payloads = [orjson.loads(data) for _, data in received]
    assert all(payload["type"] == kind for kind, payload in zip(kinds, payloads, strict=True))
    assert all(payload["response"]["model"] == "az" for payload in payloads if "response" in payload)
    assert kinds[0] == "response.created" and not any(kind.startswith("codex.") for kind in kinds)
    if name in ("error event", "cut short"):
        assert kinds[-1] == "response.failed"
    else:
        assert kinds[-1] == "response.completed" and len(kinds) == len(_without_foreign(events))
    if name == "a nested model":
        assert payloads[0]["response"]["tools"] == [{"type": "image_generation", "model": "gpt-image-1"}]


@pytest.mark.parametrize("store", [False, True], ids=["not-stored", "stored"])
async def test_an_input_item_that_is_no_object_is_refused_before_the_upstream(stack: Stack, store: bool) -> None:
    # Items nothing keeps are passed through as sent, yet still checked.
    client = make_openai_client(stack)
    before = len(stack.azure.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/responses", cast_to=object, body={
            "model": "az", "store": store, "input": [{"role": "user", "content": "hi"}, "hi"]})
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["param"] == "input[1]" and error["message"] == "an input item must be an object"
    assert len(stack.azure.requests) == before
