"""An upstream stream event is bounded by `max_event_mb`: a larger one, or one that never
ends, fails the attempt as an upstream error (another attempt before the first byte, an
SSE error event after it) instead of growing the gateway's memory without bound."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
STREAM = {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
HUGE = b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'        # 3 MiB, over the 1 MiB cap
CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hello"},
                      "finish_reason": None}]}


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    config = make_config(openai_fake.url)
    config["providers"][1]["max_event_mb"] = 1
    async with make_gateway(config) as running:
        yield running


async def post_stream(gateway: Gateway) -> tuple[int, bytes]:
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json=STREAM, headers=AUTH)
        return response.status, await response.read()


async def test_an_oversized_first_event_is_retried(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(chunks=[HUGE]))
    status, body = await post_stream(gateway)
    assert status == 200
    assert b"[DONE]" in body and b'"error"' not in body
    assert len(openai_fake.requests) == 2


async def test_oversized_events_on_every_attempt_are_a_502(gateway: Gateway,
                                                          openai_fake: OpenAIFake) -> None:
    openai_fake.script(*[Scripted(chunks=[HUGE])] * 3)
    status, body = await post_stream(gateway)
    assert status == 502
    error = orjson.loads(body)["error"]
    assert error["type"] == "upstream_error" and "SSE event larger than" in error["message"]


async def test_an_oversized_event_mid_stream_ends_it_with_an_error_event(
        gateway: Gateway, openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(chunks=[CHUNK, HUGE, CHUNK]))
    status, body = await post_stream(gateway)
    assert status == 200
    events = [line[6:] for line in body.split(b"\n\n") if line.startswith(b"data: ")]
    assert orjson.loads(events[0])["choices"][0]["delta"]["content"] == "hello"
    assert orjson.loads(events[-2])["error"]["code"] == "upstream_event_too_large"
    assert events[-1] == b"[DONE]"


async def test_an_event_that_never_ends_is_cut_off(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    """A `data:` line without end (and comment lines without a blank line) is held only up
    to the cap, not until the upstream timeout."""
    never_ends = b"data: " + orjson.dumps(CHUNK) + b"\n\n" + b"data: " + b"y" * (2 * 1024 * 1024)
    comments = b": keep-alive\n" * 200_000
    for raw, attempts in ((never_ends, 1), (comments, 3)):
        openai_fake.script(*[Scripted(raw=raw, content_type="text/event-stream")] * attempts)
        status, body = await post_stream(gateway)
        if raw is never_ends:       # the first event went out: an error event ends the stream
            assert status == 200 and b"upstream_event_too_large" in body and body.endswith(b"[DONE]\n\n")
        else:
            assert status == 502 and b"SSE event larger than" in body
