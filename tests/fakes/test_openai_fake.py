"""The OpenAI fake itself, proven with the real `openai` SDK: if the SDK parses what the
fake sends, the gateway's end-to-end tests can trust it as an upstream."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.fakes.openai_fake import OpenAIFake, Scripted, embedding_vector, make_openai_fake
from tests.harness import sdk_http

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running


def decode_base64_floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def make_client(fake: OpenAIFake, **options: object) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=fake.url, api_key="sk-test", max_retries=0, http_client=sdk_http(),
                       **options)  # type: ignore[arg-type]


async def test_chat_non_stream_is_parsed_and_recorded(fake: OpenAIFake) -> None:
    client = make_client(fake)
    response = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}], temperature=0.2
    )
    assert response.choices[0].message.content == "Fake reply to: hello there"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "gpt-4o-mini"
    assert response.usage is not None and response.usage.total_tokens == response.usage.prompt_tokens + 5
    assert response._request_id == "req_fake1"
    [seen] = fake.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.body == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.2}


async def test_sync_client_works_too(fake: OpenAIFake) -> None:
    def call() -> str | None:
        client = OpenAI(base_url=fake.url, api_key="sk-test", max_retries=0)
        response = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        return response.choices[0].message.content

    assert await asyncio.wait_for(asyncio.to_thread(call), 10) == "Fake reply to: x"


async def test_stream_has_role_content_finish_and_usage_chunks(fake: OpenAIFake) -> None:
    client = make_client(fake)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}],
        stream=True, stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake reply to: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_stream_without_usage_option_has_no_usage_chunk(fake: OpenAIFake) -> None:
    stream = await make_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a b"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_stream_helper_accumulates_the_stream(fake: OpenAIFake) -> None:
    async with make_client(fake).chat.completions.stream(
        model="m", messages=[{"role": "user", "content": "say something"}]
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Fake reply to: say something"
    assert final.choices[0].message.role == "assistant"


async def test_tool_call_non_stream(fake: OpenAIFake) -> None:
    response = await make_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "use the weather tool for Paris"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"query":"use the weather tool for Paris"}'  # type: ignore[union-attr]


async def test_tool_call_stream_is_stitched_by_the_sdk_helper(fake: OpenAIFake) -> None:
    async with make_client(fake).chat.completions.stream(
        model="m", messages=[{"role": "user", "content": "call a tool please"}], tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        final = await stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"query":"call a tool please"}'


async def test_tools_without_asking_for_one_give_text(fake: OpenAIFake) -> None:
    response = await make_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].finish_reason == "stop"


async def test_completions_non_stream_and_stream(fake: OpenAIFake) -> None:
    client = make_client(fake)
    response = await client.completions.create(model="instruct", prompt="Once upon")
    assert response.choices[0].text == " Fake completion of: Once upon"
    assert response.usage is not None and response.usage.prompt_tokens == 2
    stream = await client.completions.create(
        model="instruct", prompt="Once upon", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " Fake completion of: Once upon"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
async def test_embeddings_in_every_encoding(fake: OpenAIFake, encoding_format: str | None) -> None:
    options = {"encoding_format": encoding_format} if encoding_format else {}
    response = await make_client(fake).embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], dimensions=16, **options  # type: ignore[arg-type]
    )
    vectors = [item.embedding for item in response.data]
    if encoding_format == "base64":     # asked for explicitly, the SDK hands the string over
        vectors = [decode_base64_floats(str(vector)) for vector in vectors]
    assert vectors == [embedding_vector("alpha", 16), embedding_vector("beta", 16)]
    assert response.usage.prompt_tokens == 2
    sent_format = fake.requests[0].body.get("encoding_format")
    assert sent_format == (encoding_format or "base64")   # the SDK asks for base64 by default


async def test_models_list_and_retrieve(fake: OpenAIFake) -> None:
    client = make_client(fake)
    listed = [model.id async for model in client.models.list()]
    assert listed == ["gpt-4o-mini", "text-embedding-3-small"]
    assert (await client.models.retrieve("gpt-4o-mini")).owned_by == "fake"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")
    assert [r.path for r in fake.requests] == ["/v1/models", "/v1/models/gpt-4o-mini", "/v1/models/nope"]


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(400, openai.BadRequestError), (401, openai.AuthenticationError),
     (429, openai.RateLimitError), (500, openai.InternalServerError), (503, openai.InternalServerError)],
)
async def test_scripted_error_status_reaches_the_sdk(fake: OpenAIFake, status: int, error_class: type[Exception]) -> None:
    fake.script(Scripted(status=status, headers={"retry-after": "1"}))
    with pytest.raises(error_class) as caught:
        await make_client(fake).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.response.headers["retry-after"] == "1"  # type: ignore[attr-defined]
    assert fake.pending_scripts == 0


async def test_scripts_are_used_in_order_and_by_path(fake: OpenAIFake) -> None:
    fake.script(Scripted(path="/v1/embeddings", status=500), Scripted(text="first"), Scripted(text="second"))
    client = make_client(fake)
    replies = []
    for _ in range(3):
        response = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        replies.append(response.choices[0].message.content)
    assert replies == ["first", "second", "Fake reply to: x"]
    with pytest.raises(openai.InternalServerError):
        await client.embeddings.create(model="e", input="x")


async def test_scripted_body_and_raw_bytes(fake: OpenAIFake) -> None:
    fake.script(Scripted(body={"id": "custom", "object": "chat.completion", "created": 1, "model": "z", "choices": []}),
                Scripted(raw=b"<html>bad gateway</html>", status=502, content_type="text/html"))
    client = make_client(fake)
    custom = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert (custom.id, custom.choices) == ("custom", [])
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.text == "<html>bad gateway</html>"


async def test_hang_is_noticed_when_the_caller_leaves(fake: OpenAIFake) -> None:
    fake.script(Scripted(hang=True))
    with pytest.raises(openai.APITimeoutError):
        await make_client(fake, timeout=0.3).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await asyncio.wait_for(fake.requests[0].disconnected.wait(), 5)


async def test_drop_closes_the_connection_without_an_answer(fake: OpenAIFake) -> None:
    fake.script(Scripted(drop=True))
    with pytest.raises(openai.APIConnectionError):
        await make_client(fake).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


async def test_drop_mid_stream_breaks_the_stream_after_some_chunks(fake: OpenAIFake) -> None:
    fake.script(Scripted(drop_after_chunks=2))
    stream = await make_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a b c d e f"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2


async def test_slow_stream_and_delay_still_deliver_everything(fake: OpenAIFake) -> None:
    fake.script(Scripted(delay_s=0.05, chunk_delay_s=0.01))
    stream = await make_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "slow words here"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "Fake reply to: slow words here"


async def test_scripted_chunks_with_an_error_event_raise_in_the_sdk(fake: OpenAIFake) -> None:
    error = {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": "upstream_overloaded"}}
    first = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]}
    fake.script(Scripted(chunks=[first, error], done=False))
    stream = await make_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="overloaded"):
        async for chunk in stream:
            received.append(chunk)
    assert [c.choices[0].delta.content for c in received] == ["hi"]
