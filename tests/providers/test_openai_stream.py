"""The openai-type stream pass-through (also the mock's): what it forwards, drops and fails."""

from __future__ import annotations

import orjson
import pytest

from truckllm.errors import UpstreamFailed
from truckllm.providers.base import CallContext, SSEEvent
from truckllm.providers.openai import PassThroughStream
from truckllm.usage import Usage

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


@pytest.mark.parametrize("data", [
    b"{broken json", b'["not", "an", "object"]', b'{"id":"c1","choices":"nope"}',
    b'{"id":"c1","choices":[1]}',
    # Broken inside what is passed on unread: the whole chunk is still read.
    b'{"id":"c1","choices":[{"index":0,"delta":{"content":"x}}]}',
    b'{"id":"c1","choices":[{"index":0,"delta":{"content":"x"},"logprobs":[1,}]}',
    b'{"id":"c1","choices":[{"index":0,"delta":{"content":"x"}}]} trailing',
    b'{"id":"c1","choices":[{"index":0,"delta":{"content":"caf\xe9"}}]}',   # not UTF-8
])
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


USAGE = b'{"id":"c1","object":"chat.completion.chunk","model":"up","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
FINISH_WITH_USAGE = FINISH[:-1] + b',"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}'
PROMPT_FILTER = b'{"id":"","object":"","created":0,"model":"","choices":[],"prompt_filter_results":[]}'
ERROR = b'{"error":{"message":"boom","type":"server_error"}}'
SPACED = CHUNK.replace(b'"model":"up"', b'"model": "up"')
NESTED = CHUNK[:-1] + b',"extra":{"model":"up"}}'
NO_MODEL = CHUNK.replace(b'"model":"up",', b"")
OTHER_MODEL = CHUNK.replace(b'"model":"up"', b'"model":"up-2"')
# Reads the pass-through takes whole: what a stream's reads usually are.
TAKEN_WHOLE = [[CHUNK], [CHUNK, CHUNK, FINISH], [CHUNK, FINISH, USAGE, b"[DONE]"], [FINISH, b"[DONE]"],
               [b"[DONE]"], [USAGE], [FINISH_WITH_USAGE], [CHUNK, FINISH_WITH_USAGE, b"[DONE]"]]
# Reads it may leave to `feed`, which must come to the same.
OTHERS = [[PROMPT_FILTER, CHUNK], [CHUNK, ERROR], [ERROR], [CHUNK, b"{broken"], [b'["no"]'],
          [b'{"choices":"nope"}'], [b'{"id":"x"}'], [SPACED], [CHUNK, SPACED], [NESTED], [CHUNK, NESTED],
          [NO_MODEL], [CHUNK, NO_MODEL], [OTHER_MODEL], [CHUNK, OTHER_MODEL], [b"[DONE] "],
          [USAGE, CHUNK], [b"[DONE]", CHUNK]]


def fed_one_by_one(stream: PassThroughStream, payloads: list[bytes]) -> bytes | Exception:
    out = b""
    try:
        for payload in payloads:
            out += b"".join(b"data: %b\n\n" % event.data for event in stream.feed(SSEEvent(None, payload)))
    except UpstreamFailed as exc:
        return exc
    return out


def ends(stream: PassThroughStream) -> bool:
    try:
        stream.close()
    except UpstreamFailed:
        return False
    return True


@pytest.mark.parametrize("alias", ["alias", "up"])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("first", [[], [CHUNK]], ids=["first read", "later read"])
@pytest.mark.parametrize("payloads", TAKEN_WHOLE + OTHERS)
def test_a_read_taken_whole_comes_to_what_feed_makes_of_its_events(
        payloads: list[bytes], first: list[bytes], include_usage: bool, alias: str) -> None:
    whole, one_by_one = (PassThroughStream(CallContext(alias, "req", 1, True, include_usage)) for _ in "ab")
    for stream in (whole, one_by_one):
        for payload in first:
            stream.feed(SSEEvent(None, payload))
    read = b"".join(b"data: %b\n\n" % payload for payload in payloads)
    out = whole.feed_read(read, payloads)
    if payloads in TAKEN_WHOLE and (first or payloads != [USAGE]):     # its model learnt
        assert out is not None
    if out is None:         # the relay feeds the same events one by one
        out = fed_one_by_one(whole, payloads)
    expected = fed_one_by_one(one_by_one, payloads)
    if isinstance(expected, Exception):
        assert isinstance(out, Exception) and str(out) == str(expected)
        return
    assert out == expected
    assert whole.usage == one_by_one.usage
    assert ends(whole) == ends(one_by_one)


def test_a_streamed_count_too_large_for_a_counter_is_zero() -> None:
    """A stream's chunks are decoded with integers of any size: one past what a 64-bit
    counter (Redis's) holds is not charged."""
    stream = make_stream(include_usage=True)
    stream.feed(SSEEvent(None, b'{"model":"up","choices":[],"usage":{"prompt_tokens":'
                               b'99999999999999999999999,"completion_tokens":2}}'))
    assert stream.usage == Usage(0, 2)
