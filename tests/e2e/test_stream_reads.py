"""Upstream stream events that arrive together (one upstream write, so mostly one read of
the gateway's) reach the client exactly as the same events do sent one by one, and as
they do framed with CRLF line ends (which the relay decodes event by event): the same
model rewrite, the same chunks dropped, the same failures. Through the HTTP API, against
the fake OpenAI upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


ROLE = chunk({"role": "assistant", "content": ""})
WORDS = [chunk({"content": word}) for word in ("Hello", " there", ", friend")]
FINISH = chunk({}, "stop")
USAGE = orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                      "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
PROMPT_FILTER = b'{"id":"","object":"","created":0,"model":"","choices":[],"prompt_filter_results":[]}'
ERROR = b'{"error":{"message":"the model is overloaded","type":"server_error"}}'
# A chunk whose content quotes a model field, and one with a nested object that has one.
QUOTING = chunk({"content": '{"model":"gpt-4o-mini"}'})
NESTED = chunk({"content": "!"}, extra={"model": "gpt-4o-mini"})
SPACED = chunk({"content": "?"}).replace(b'"model":"gpt-4o-mini"', b'"model": "gpt-4o-mini"')
STREAMS = {
    "plain": [ROLE, *WORDS, FINISH, USAGE, b"[DONE]"],
    "no [DONE]": [ROLE, *WORDS, FINISH, USAGE],
    "prompt filter first": [PROMPT_FILTER, ROLE, *WORDS, FINISH, USAGE, b"[DONE]"],
    "model fields in content": [ROLE, QUOTING, NESTED, SPACED, FINISH, USAGE, b"[DONE]"],
    "error event": [ROLE, WORDS[0], ERROR, WORDS[1], b"[DONE]"],
    "broken chunk": [ROLE, WORDS[0], b'{"id":"c1","choices":[', WORDS[1], FINISH, b"[DONE]"],
    "cut short": [ROLE, *WORDS],
}


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    config = make_config(openai_fake.url)
    # An alias that is the upstream's own model name: the rewrite changes nothing.
    config["models"].append({"alias": "gpt-4o-mini", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]})
    async with make_gateway(config) as running:
        yield running


async def client_bytes(gateway: Gateway, openai_fake: OpenAIFake, scripted: Scripted, model: str,
                       include_usage: bool) -> bytes:
    openai_fake.script(scripted)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": include_usage}}
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json=body, headers=AUTH)
        assert response.status == 200
        return await response.read()


def together(payloads: Sequence[bytes], line_end: bytes = b"\n") -> Scripted:
    raw = b"".join(b"data: " + payload + line_end + line_end for payload in payloads)
    return Scripted(raw=raw, content_type="text/event-stream")


@pytest.mark.parametrize("model", ["gpt", "gpt-4o-mini"])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("name", list(STREAMS))
async def test_events_read_together_reach_the_client_as_they_do_one_by_one(
        gateway: Gateway, openai_fake: OpenAIFake, name: str, include_usage: bool, model: str) -> None:
    payloads = STREAMS[name]
    one_by_one = Scripted(chunks=[p for p in payloads if p != b"[DONE]"], done=payloads[-1] == b"[DONE]",
                          chunk_delay_s=0.002)
    sent = [await client_bytes(gateway, openai_fake, scripted, model, include_usage)
            for scripted in (together(payloads), together(payloads, b"\r\n"), one_by_one)]
    assert sent[0] == sent[1] == sent[2]
    events = [event.removeprefix(b"data: ") for event in sent[0].split(b"\n\n") if event]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    if name in ("plain", "no [DONE]", "prompt filter first", "model fields in content"):
        assert all(c["model"] == model for c in chunks) and "error" not in chunks[-1]
        assert bool(chunks[-1]["usage"] if chunks[-1]["choices"] == [] else None) == include_usage
        assert [c for c in chunks if not c["choices"]] == ([orjson.loads(USAGE) | {"model": model}]
                                                           if include_usage else [])
    else:
        assert chunks[-1]["error"]["type"] == "upstream_error" and len(chunks) >= 2
    if name == "model fields in content":
        assert chunks[1]["choices"][0]["delta"]["content"] == '{"model":"gpt-4o-mini"}'
        assert chunks[2]["extra"] == {"model": "gpt-4o-mini"}
