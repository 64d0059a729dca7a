"""The built-in mock provider, as a new user meets it: through the SDK, no network."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.harness import make_config, make_gateway

pytestmark = pytest.mark.asyncio


def mock_config(**options: object) -> dict[str, object]:
    config = make_config()
    config["providers"] = [{"id": "demo", "type": "mock", **options}]
    return config


async def test_same_request_same_answer_derived_from_the_last_user_message() -> None:
    async with make_gateway(mock_config()) as gateway:
        client = gateway.client()
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping the trucks"}]
        first = await client.chat.completions.create(model="demo", messages=messages)
        second = await client.chat.completions.create(model="demo", messages=messages)
        assert first.choices[0].message.content == second.choices[0].message.content == "You said: ping the trucks"
        assert first.id == second.id
        assert first.choices[0].finish_reason == "stop"
        assert first.usage is not None and first.usage.prompt_tokens > 0 and first.usage.completion_tokens == 5


async def test_stream_comes_in_several_chunks_with_usage_when_asked() -> None:
    async with make_gateway(mock_config()) as gateway:
        stream = await gateway.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "one two three four"}], stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: one two three four"
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 5
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


async def test_max_tokens_cuts_the_answer_with_length() -> None:
    async with make_gateway(mock_config()) as gateway:
        completion = await gateway.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "a b c d e f"}], max_tokens=3)
        assert completion.choices[0].finish_reason == "length"
        assert completion.choices[0].message.content == "You said: a"


async def test_required_tool_choice_gives_a_tool_call() -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    async with make_gateway(mock_config()) as gateway:
        completion = await gateway.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "find it"}], tools=[tool], tool_choice="required")
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "lookup"  # type: ignore[union-attr]
        assert orjson.loads(call.function.arguments) == {"input": "You said: find it"}  # type: ignore[union-attr]
        assert completion.choices[0].finish_reason == "tool_calls"


async def test_embeddings_are_deterministic_unit_vectors_of_the_configured_size() -> None:
    async with make_gateway(mock_config(embedding_dim=32)) as gateway:
        client = gateway.client()
        first = await client.embeddings.create(model="demo", input=["truck", "road"])
        again = await client.embeddings.create(model="demo", input="truck", encoding_format="float")
        assert len(first.data) == 2 and len(first.data[0].embedding) == 32
        assert first.data[0].embedding == pytest.approx(again.data[0].embedding, rel=1e-6)
        assert first.data[0].embedding != first.data[1].embedding
        assert sum(v * v for v in first.data[0].embedding) == pytest.approx(1.0, rel=1e-4)


async def test_latency_and_chunk_delay_pace_the_answer() -> None:
    async with make_gateway(mock_config(latency_ms=150, chunk_delay_ms=30)) as gateway:
        began = time.perf_counter()
        stream = await gateway.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "a b c"}], stream=True)
        arrivals = [time.perf_counter() - began async for _ in stream]
        assert arrivals[0] >= 0.15
        assert arrivals[-1] - arrivals[0] >= 0.03 * 4


async def test_completions_through_the_mock() -> None:
    async with make_gateway(mock_config()) as gateway:
        completion = await gateway.client().completions.create(model="demo", prompt="hello road")
        assert completion.choices[0].text == "You said: hello road"
        assert completion.model == "demo"


async def test_sync_sdk_against_the_mock() -> None:
    async with make_gateway(mock_config()) as gateway:
        text = await asyncio.to_thread(
            lambda: gateway.sync_client().chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "sync"}]).choices[0].message.content)
        assert text == "You said: sync"


