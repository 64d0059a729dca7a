"""The OpenAI-compatible API end to end: the real `openai` SDK, sync and async, through
the real TruckLLM app, to a fake OpenAI upstream that records what it received."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio

HELLO = [{"role": "user", "content": "Say hello to the trucks"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    async with make_gateway(make_config(openai_fake.url)) as running:
        yield running


async def test_chat_non_streaming_answers_with_the_alias_and_gateway_headers(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="gpt", messages=HELLO, extra_headers={"X-Request-ID": "req-from-client-1"})
    completion = raw.parse()
    assert completion.model == "gpt"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-request-id"] == "req-from-client-1"
    assert raw.headers["x-truckllm-provider"] == "up"
    assert raw.headers["x-truckllm-model"] == "gpt-4o-mini"
    assert raw.headers["x-truckllm-attempts"] == "1"
    assert float(raw.headers["x-truckllm-overhead-ms"]) >= 0
    sent = openai_fake.requests[-1]
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-1"
    assert sent.headers["x-request-id"] == "req-from-client-1"
    assert sent.headers["user-agent"].startswith("TruckLLM/")      # not aiohttp's


async def test_the_access_line_masks_a_secret_in_a_request_id_the_client_chose(openai_fake: OpenAIFake) -> None:
    """A client's X-Request-ID is its own text: a secret in it is masked in the access line.
    An id the gateway made is logged as it was sent back."""
    config = make_config(openai_fake.url, server={"log_level": "info"})
    async with make_gateway(config) as gateway:
        client = gateway.client()
        with gateway.log_lines() as logs:
            await client.chat.completions.create(
                model="gpt", messages=HELLO, extra_headers={"X-Request-ID": "id-sk-upstream-secret-1"})
            made = await client.chat.completions.with_raw_response.create(model="gpt", messages=HELLO)
    ids = [line["request_id"] for line in logs if line["event"] == "request"]
    assert ids == ["id-***", made.headers["x-request-id"]]


async def test_a_cookie_an_upstream_sets_is_never_sent_back(openai_fake: OpenAIFake) -> None:
    # One upstream session serves every client: a cookie from one answer must not go out
    # with the next request (another client's, or a stream's). By a host name, not an IP
    # address: aiohttp's default cookie jar ignores cookies from IP addresses.
    upstream = openai_fake.url.replace("127.0.0.1", "localhost")
    openai_fake.script(Scripted(headers={"Set-Cookie": "session=client-a; Path=/"}),
                       Scripted(headers={"Set-Cookie": "other=client-a; Path=/"}))
    async with make_gateway(make_config(upstream)) as gateway:
        client = gateway.client()
        await client.chat.completions.create(model="gpt", messages=HELLO)
        await client.chat.completions.create(model="gpt", messages=HELLO)
        [chunk async for chunk in await client.chat.completions.create(
            model="gpt", messages=HELLO, stream=True)]
    assert [sent.headers.get("cookie") for sent in openai_fake.requests] == [None, None, None]


async def test_sync_client_streams_and_completes(gateway: Gateway) -> None:
    def run() -> tuple[str, list[str]]:
        client = gateway.sync_client()
        text = client.chat.completions.create(model="gpt", messages=HELLO).choices[0].message.content or ""
        models = [chunk.model for chunk in client.chat.completions.create(model="gpt", messages=HELLO, stream=True)]
        return text, models

    text, models = await asyncio.to_thread(run)
    assert text
    assert models and set(models) == {"gpt"}


async def test_stream_chunks_follow_the_sdk_contract(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    stream = await gateway.client().chat.completions.create(model="gpt", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == "gpt" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks), "no usage chunk unless the client asked"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    # TruckLLM asked upstream for usage on the client's behalf, so it can count tokens.
    assert openai_fake.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_include_usage_gives_one_usage_chunk_last(gateway: Gateway) -> None:
    stream = await gateway.client().chat.completions.create(
        model="gpt", messages=HELLO, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0  # type: ignore[union-attr]


async def test_stream_wire_format_is_sse_with_done(gateway: Gateway) -> None:
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                                   json={"model": "gpt", "messages": HELLO, "stream": True})
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in response.headers
        body = await response.read()
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        assert event.startswith(b"data: ")
        assert orjson.loads(event[6:])["model"] == "gpt"


async def test_unknown_fields_tools_images_reach_upstream_untouched(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is the weather? call the tool"}, image]}]
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    completion = await gateway.client().chat.completions.create(
        model="gpt", messages=messages, tools=[TOOL], tool_choice="auto", response_format=response_format,
        extra_body={"vendor_knob": {"nested": [1, 2]}, "seed": 7})
    sent = openai_fake.requests[-1].body
    assert sent["tools"] == [TOOL]
    assert sent["messages"] == messages
    assert sent["response_format"] == response_format
    assert sent["vendor_knob"] == {"nested": [1, 2]} and sent["seed"] == 7
    assert completion.choices[0].message.tool_calls


async def test_streamed_tool_calls_accumulate_in_the_sdk(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": "call the weather tool for Paris"}]
    stream = await gateway.client().chat.completions.create(model="gpt", messages=messages, tools=[TOOL], stream=True)
    name, arguments, finish = "", "", None
    async for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            name += call.function.name or "" if call.function else ""
            arguments += call.function.arguments or "" if call.function else ""
        finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert isinstance(orjson.loads(arguments), dict)
    assert finish == "tool_calls"


async def test_wildcard_alias_passes_the_suffix_upstream(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    completion = await gateway.client().chat.completions.create(model="openai/gpt-4.1-nano", messages=HELLO)
    assert completion.model == "openai/gpt-4.1-nano"
    assert openai_fake.requests[-1].body["model"] == "gpt-4.1-nano"


async def test_legacy_completions_stream_and_not(gateway: Gateway) -> None:
    client = gateway.client()
    completion = await client.completions.create(model="gpt", prompt="Once upon a time")
    assert completion.model == "gpt" and completion.choices[0].text
    stream = await client.completions.create(model="gpt", prompt="Once upon a time", stream=True)
    pieces = [c async for c in stream]
    assert "".join(c.choices[0].text for c in pieces if c.choices)
    assert all(c.model == "gpt" for c in pieces)


async def test_embeddings_float_and_base64(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    client = gateway.client()
    default = await client.embeddings.create(model="embed", input=["a truck", "a road"])   # SDK asks for base64
    assert openai_fake.requests[-1].body["encoding_format"] == "base64"
    assert len(default.data) == 2 and default.model == "embed"
    floats = await client.embeddings.create(model="embed", input="a truck", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(default.data[0].embedding, rel=1e-6)


async def test_models_list_and_get_respect_the_key_allow_list(openai_fake: OpenAIFake) -> None:
    config = make_config(openai_fake.url)
    config["keys"].append({"id": "narrow", "key": "tk-narrow", "models": ["g*"]})
    async with make_gateway(config) as gateway:
        everything = [m.id async for m in gateway.client().models.list()]
        assert everything == ["demo", "gpt", "embed"]
        async with gateway.http() as http:
            listed = await (await http.get("/v1/models", headers={
                "Authorization": f"Bearer {CLIENT_KEY}"})).json()
        assert listed["wildcards"] == [{"pattern": "openai/*", "prefix": "openai/", "suffix": "",
                                        "owned_by": "up"}]
        narrow = gateway.client("tk-narrow")
        assert [m.id async for m in narrow.models.list()] == ["gpt"]
        assert (await narrow.models.retrieve("gpt")).id == "gpt"
        with pytest.raises(Exception) as denied:
            await narrow.models.retrieve("demo")
        assert getattr(denied.value, "status_code", None) == 404


async def test_get_routes_answer_head_too(gateway: Gateway) -> None:
    async with gateway.http() as http:
        for path in ("/health", "/v1/models", "/v1/models/demo"):
            response = await http.head(path, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            assert response.status == 200, path
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["x-request-id"]


async def test_client_key_in_every_accepted_header(gateway: Gateway) -> None:
    body = {"model": "demo", "messages": HELLO}
    async with gateway.http() as http:
        for headers in ({"Authorization": f"Bearer {CLIENT_KEY}"}, {"x-api-key": CLIENT_KEY}, {"api-key": CLIENT_KEY}):
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status == 200, headers


async def test_hashed_client_keys_and_an_open_api(openai_fake: OpenAIFake) -> None:
    import hashlib
    config = make_config(openai_fake.url)
    config["keys"] = [{"id": "hashed", "key": "sha256:" + hashlib.sha256(b"tk-only-a-hash").hexdigest()}]
    async with make_gateway(config) as gateway:
        assert (await gateway.client("tk-only-a-hash").chat.completions.create(model="demo", messages=HELLO)).model == "demo"
    del config["keys"]
    async with make_gateway(config) as gateway:
        assert (await gateway.client("anything").chat.completions.create(model="demo", messages=HELLO)).model == "demo"


def decode_base64_floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
