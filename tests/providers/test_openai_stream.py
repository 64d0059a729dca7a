"""The openai-type stream pass-through (also the mock's): what it forwards, drops and fails."""

from __future__ import annotations

import orjson
import pytest

from truckllm.errors import UpstreamFailed
from truckllm.providers.base import CallContext, SSEEvent
from truckllm.providers.openai import PassThroughStream

CHUNK = b'{"id":"c1","object":"chat.completion.chunk","model":"up","choices":[{"index":0,"delta":{"content":"x"}}]}'
FINISH = b'{"id":"c1","object":"chat.completion.chunk","model":"up","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


def make_stream(include_usage: bool = False) -> PassThroughStream:
    return PassThroughStream(CallContext("alias", "req", 1, True, include_usage))


def test_forwards_chunks_with_the_alias_and_finishes_on_done() -> None:
    stream = make_stream()
    assert stream.feed(SSEEvent(None, CHUNK)) == [
        SSEEvent(None, CHUNK.replace(b'"model":"up"', b'"model":"alias"'))]
    assert stream.feed(SSEEvent(None, b"[DONE]")) == [] and stream.close() == []


def test_drops_empty_choice_chunks_without_usage() -> None:
    prompt_filter = b'{"id":"","object":"","created":0,"model":"","choices":[],"prompt_filter_results":[]}'
    assert make_stream().feed(SSEEvent(None, prompt_filter)) == []


def test_error_object_raises_but_a_null_error_field_does_not() -> None:
    stream = make_stream()
    with pytest.raises(UpstreamFailed, match="boom"):
        stream.feed(SSEEvent(None, b'{"error": {"message": "boom", "type": "server_error"}}'))
    with_null = b'{"error":null,' + FINISH[1:]
    assert len(stream.feed(SSEEvent(None, with_null))) == 1
    assert stream.close() == []             # a finish_reason without [DONE] is a whole answer


def test_stream_ending_with_neither_done_nor_finish_is_an_error() -> None:
    stream = make_stream()
    stream.feed(SSEEvent(None, CHUNK))
    with pytest.raises(UpstreamFailed, match="ended before it finished"):
        stream.close()


@pytest.mark.parametrize("data", [b"{broken json", b'["not", "an", "object"]',
                                  b'{"id":"c1","choices":"nope"}'])
def test_a_chunk_that_is_not_a_chunk_fails_the_stream(data: bytes) -> None:
    with pytest.raises(UpstreamFailed):
        make_stream().feed(SSEEvent(None, data))


def test_every_chunk_gets_the_alias_however_its_model_is_spelled() -> None:
    stream = make_stream()
    chunks = [CHUNK, CHUNK, CHUNK.replace(b'"model":"up"', b'"model":"up-2"'),
              CHUNK.replace(b'"model":"up"', b'"model": "up"'), CHUNK.replace(b'"model":"up",', b""),
              FINISH]
    for data in chunks:
        [event] = stream.feed(SSEEvent(None, data))
        sent, upstream = orjson.loads(event.data), orjson.loads(data)
        assert sent.pop("model", "alias") == "alias"
        upstream.pop("model", None)
        assert sent == upstream
    assert stream.close() == []
