"""End to end, the real SDKs through TruckLLM to the fake Anthropic, Gemini and Azure
servers: features the conformance goldens cover, proven on the real boundary
too — base64 embeddings for every provider type that has embeddings, images (data: and
https URLs), legacy functions, response_format, and upstream errors before and during a
stream for each provider."""

from __future__ import annotations

import base64
import json
import struct
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import pytest

from tests.fakes.gemini_fake import error_body as gemini_error
from tests.fakes.wire_fake import Reply, sse
from tests.harness import (
    CLIENT_KEY,
    EXTRA_HEADERS,
    UPSTREAM_KEYS,
    Stack,
    imported_on_first_use,
    make_openai_client,
)

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = imported_on_first_use("anthropic")

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
PNG = "data:image/png;base64,iVBORw0KGgo="
PHOTO = "https://example.com/photos/cat.webp?sig=abc"
WEATHER_FUNCTION: Any = {"name": "get_weather", "description": "Current weather for a city.",
                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
SCHEMA: Any = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


async def post_json(stack: Stack, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.post(stack.url + path, json=body, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def decode(embedding: str) -> list[float]:
    raw = base64.b64decode(embedding)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# ---- embeddings -----------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["gem-embed", "az-embed", "oai-embed", "demo"])
async def test_base64_embeddings_are_base64_on_the_wire(stack: Stack, alias: str) -> None:
    request = {"model": alias, "input": ["first", "second text"]}
    as_base64 = await post_json(stack, "/embeddings", {**request, "encoding_format": "base64"})
    as_floats = await post_json(stack, "/embeddings", {**request, "encoding_format": "float"})
    assert all(isinstance(item["embedding"], str) for item in as_base64["data"]), "a float array decodes to garbage"
    for encoded, floats in zip(as_base64["data"], as_floats["data"], strict=True):
        assert decode(encoded["embedding"]) == pytest.approx(floats["embedding"], rel=1e-6)
    assert as_base64["model"] == alias


@pytest.mark.parametrize("alias", ["az-embed", "oai-embed"])
async def test_upstream_ignoring_base64_is_encoded_for_the_client(stack: Stack, alias: str) -> None:
    floats = {"object": "list", "model": "m", "usage": {"prompt_tokens": 2, "total_tokens": 2},
              "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -1.5, 3]}]}
    stack.azure.script(Reply(body=floats, path="embeddings"))        # an old api-version, say
    answer = await post_json(stack, "/embeddings", {"model": alias, "input": "x", "encoding_format": "base64"})
    assert decode(answer["data"][0]["embedding"]) == [0.25, -1.5, 3.0]
    assert answer["model"] == alias and answer["usage"]["prompt_tokens"] == 2


# ---- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_images_as_data_and_https_urls_reach_the_upstream(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    answer = await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": PHOTO}}]}])
    assert answer.choices[0].message.content
    if alias == "claude":
        blocks = stack.anthropic.requests[-1].body["messages"][0]["content"]
        assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                         "data": "iVBORw0KGgo="}}
        assert blocks[2] == {"type": "image", "source": {"type": "url", "url": PHOTO}}
    elif alias == "gem":
        parts = stack.gemini.requests[-1].body["contents"][0]["parts"]
        assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
        assert parts[2] == {"fileData": {"mimeType": "image/webp", "fileUri": PHOTO}}
    else:
        content = stack.azure.requests[-1].body["messages"][0]["content"]
        assert [part["image_url"]["url"] for part in content[1:]] == [PNG, PHOTO]


# ---- legacy functions and response_format ---------------------------------------------------


@pytest.mark.parametrize("alias", ["claude", "gem"])
async def test_legacy_functions_answer_with_function_call(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    messages: Any = [{"role": "user", "content": "weather in Paris?"}]
    answer = await client.chat.completions.create(model=alias, messages=messages, functions=[WEATHER_FUNCTION],
                                                  function_call={"name": "get_weather"})
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "function_call" and message.tool_calls is None
    assert message.function_call is not None and message.function_call.name == "get_weather"
    assert json.loads(message.function_call.arguments) == {"city": "Paris"}
    stream = await client.chat.completions.create(model=alias, messages=messages, functions=[WEATHER_FUNCTION],
                                                  stream=True)
    name, arguments, finishes = "", "", []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.function_call is not None:
                name += choice.delta.function_call.name or ""
                arguments += choice.delta.function_call.arguments or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert (name, json.loads(arguments), finishes) == ("get_weather", {"city": "Paris"}, ["function_call"])


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_json_schema_response_format_is_mapped(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "hi"}],
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "answer", "schema": SCHEMA}})
    if alias == "claude":
        sent = stack.anthropic.requests[-1].body
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    elif alias == "gem":
        config = stack.gemini.requests[-1].body["generationConfig"]
        assert config == {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}
    else:
        assert stack.azure.requests[-1].body["response_format"]["json_schema"]["schema"] == SCHEMA


async def test_json_object_without_an_anthropic_equivalent_is_a_400(stack: Stack) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}],
                                             response_format={"type": "json_object"})
    assert raised.value.param == "response_format" and raised.value.code == "unsupported_parameter"
    assert stack.anthropic.requests == []


# ---- upstream errors before and during a stream ---------------------------------------------

BAD_REQUEST = {
    "gem": Reply(status=400, body=gemini_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")),
    "az": Reply(status=400, body={"error": {"code": "content_filter", "param": "prompt", "status": 400,
                                            "message": "The response was filtered due to the prompt."}}),
}
MID_STREAM = {
    "gem": [sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "Half"}]}, "index": 0}]}),
            sse(gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."))],
    "az": [sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Half"}, "finish_reason": None}]}),
           sse({"error": {"code": "server_error", "message": "The model is overloaded. Please try again later."}})],
}


MID_STREAM["oai-chat"] = MID_STREAM["az"]       # an openai-type provider (the Azure v1 API)


def upstream_of(stack: Stack, alias: str) -> Any:
    return stack.gemini if alias == "gem" else stack.azure


@pytest.mark.parametrize("alias", ["gem", "az"])
async def test_upstream_error_before_the_stream_keeps_status_and_message(stack: Stack, alias: str) -> None:
    upstream_of(stack, alias).script(BAD_REQUEST[alias])
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}], stream=True)
    assert raised.value.status_code == 400
    assert "invalid argument" in raised.value.message or "filtered" in raised.value.message
    if alias == "az":
        assert raised.value.code == "content_filter"


@pytest.mark.parametrize("alias", ["gem", "az", "oai-chat"])
async def test_upstream_error_mid_stream_reaches_the_sdk_after_the_text(stack: Stack, alias: str) -> None:
    upstream_of(stack, alias).script(Reply(events=MID_STREAM[alias]))
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="overloaded"):
        async for chunk in stream:
            received += [choice.delta.content or "" for choice in chunk.choices]
    assert "".join(received) == "Half"


@pytest.mark.parametrize("alias", ["gem", "az"])
async def test_translated_messages_stream_error_raises_in_the_anthropic_sdk(stack: Stack, alias: str) -> None:
    upstream_of(stack, alias).script(Reply(events=MID_STREAM[alias]))
    client = anthropic.AsyncAnthropic(base_url=stack.root, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    stack.clients.append(client)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="overloaded"):
        async with client.messages.stream(model=alias, max_tokens=10,
                                          messages=[{"role": "user", "content": "x"}]) as stream:
            async for text in stream.text_stream:
                received.append(text)
    assert received == ["Half"]


@pytest.mark.parametrize("alias", ["gem", "az", "oai-chat"])
async def test_stream_cut_short_is_an_error_not_a_stop(stack: Stack, alias: str) -> None:
    upstream_of(stack, alias).script(Reply(events=MID_STREAM[alias][:1]))    # no finish, no [DONE]
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    finishes: list[str] = []
    with pytest.raises(openai.APIError, match="ended"):
        async for chunk in stream:
            finishes += [choice.finish_reason for choice in chunk.choices if choice.finish_reason]
    assert finishes == []


async def test_openai_type_error_event_before_content_falls_back(stack: Stack) -> None:
    stack.azure.script(Reply(events=MID_STREAM["az"][1:], path="/openai/v1/"))
    client = make_openai_client(stack)
    stream = await client.chat.completions.create(model="oai-then-gem", stream=True,
                                                  messages=[{"role": "user", "content": "hello"}])
    text = "".join([choice.delta.content or "" async for chunk in stream for choice in chunk.choices])
    assert text == "Fake reply to: hello"
    assert len(stack.gemini.requests) == 1


async def test_key_in_a_mid_stream_error_is_masked(stack: Stack) -> None:
    leaked = "AIzaSyD-upstream-secret-0123456789"
    stack.gemini.script(Reply(events=[MID_STREAM["gem"][0],
                                      sse(gemini_error(400, "INVALID_ARGUMENT", f"API key {leaked} expired"))]))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.post(stack.url + "/chat/completions", headers=AUTH, json={
                "model": "gem", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as response:
        raw = await response.text()
    assert "API key *** expired" in raw and leaked not in raw


@pytest.mark.parametrize(("alias", "provider"), [("claude", "claude"), ("gem", "google"), ("az", "az")])
async def test_provider_headers_and_auth_reach_the_upstream(stack: Stack, alias: str, provider: str) -> None:
    client = make_openai_client(stack)
    await client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}])
    headers = {"claude": stack.anthropic, "gem": stack.gemini}.get(alias, stack.azure).requests[-1].headers
    assert all(headers[name] == value for name, value in EXTRA_HEADERS.items())
    auth = {"claude": "x-api-key", "gem": "x-goog-api-key", "az": "api-key"}[alias]
    assert headers[auth] == UPSTREAM_KEYS[provider] and "authorization" not in headers


@pytest.mark.parametrize("alias", ["claude", "gem"])
async def test_system_developer_merging_and_sampling_are_translated(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    await client.chat.completions.create(
        model=alias, temperature=0.3, top_p=0.9, max_tokens=77, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use French."},
                  {"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    if alias == "claude":
        sent = stack.anthropic.requests[-1].body
        assert sent["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}]
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "one"},
                                                                 {"type": "text", "text": "two"}]}]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop_sequences"]) == \
            (0.3, 0.9, 77, ["END"])
    else:
        sent = stack.gemini.requests[-1].body
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use French."}]}
        assert sent["contents"] == [{"role": "user", "parts": [{"text": "one"}, {"text": "two"}]}]
        assert sent["generationConfig"] == {"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 77,
                                            "stopSequences": ["END"]}


async def test_anthropic_gets_a_default_max_tokens(stack: Stack) -> None:
    client = make_openai_client(stack)
    await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert stack.anthropic.requests[-1].body["max_tokens"] == 4096


async def test_a_gemini_tool_conversation_can_continue_on_anthropic(stack: Stack) -> None:
    """Gemini's tool-call ids carry a base64 thought signature; Anthropic refuses such ids,
    so a conversation that moves there (fallback, alias switch) gets them rewritten."""
    client = make_openai_client(stack)
    tools: Any = [{"type": "function", "function": WEATHER_FUNCTION}]
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.chat.completions.create(model="gem", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert "=" in call.id, "the fake's signature needs an id Anthropic would refuse"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = await client.chat.completions.create(model="claude", messages=messages, tools=tools)
    assert "18C and sunny" in (second.choices[0].message.content or "")
    blocks = stack.anthropic.requests[-1].body["messages"]
    assert blocks[1]["content"][0]["id"] == blocks[2]["content"][0]["tool_use_id"]


async def test_malformed_upstream_event_ends_the_stream_with_an_error(stack: Stack) -> None:
    start = {"type": "message_start", "message": {"id": "msg_x", "type": "message", "role": "assistant",
             "model": "m", "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}
    stack.anthropic.script(Reply(events=[
        sse(start, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}}),
        sse({"type": "content_block_delta", "index": 0, "delta": ["not", "an", "object"]})]))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.post(stack.url + "/chat/completions", headers=AUTH, json={
                "model": "claude", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as response:
        raw = await response.read()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"[DONE]" and json.loads(events[-2])["error"]["type"] == "upstream_error"
    assert json.loads(events[-3])["choices"][0]["delta"]["content"] == "Hi"


async def test_malformed_upstream_body_is_a_502(stack: Stack) -> None:
    malformed = Reply(body={"candidates": [{"content": {"parts": [1, 2]}}]})
    stack.gemini.script(*[malformed] * 5)       # every attempt gets one
    client = make_openai_client(stack)
    before = len(stack.gemini.requests)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 502
    assert len(stack.gemini.requests) - before > 1, "a failed attempt: tried again"


async def test_a_malformed_body_is_retried_and_the_next_answer_served(stack: Stack) -> None:
    stack.gemini.script(Reply(body={"candidates": [{"content": {"parts": [1, 2]}}]}))
    client = make_openai_client(stack)
    answer = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content and answer.model == "gem"
