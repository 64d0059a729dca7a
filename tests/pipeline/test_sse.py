"""SSE decoding: whatever way the bytes are cut, the same events come out."""

from __future__ import annotations

import pytest

from truckllm.pipeline.sse import EventTooLarge, SSEDecoder, frame
from truckllm.providers.base import SSEEvent

STREAM = (b": keep-alive\n\n"
          b"data: {\"a\":1}\n\n"
          b"event: message_start\r\ndata: {\"b\":2}\r\n\r\n"
          b"data: line one\ndata: line two\n\n"
          b"id: 7\nretry: 10\n\n"
          b"data: [DONE]\n\n")
EXPECTED = [SSEEvent(None, b'{"a":1}'), SSEEvent("message_start", b'{"b":2}'),
            SSEEvent(None, b"line one\nline two"), SSEEvent(None, b"[DONE]")]


def decode_in_pieces(data: bytes, size: int) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = []
    for start in range(0, len(data), size):
        events += decoder.feed(data[start:start + size])
    return events + decoder.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 1000])
def test_any_split_gives_the_same_events(size: int) -> None:
    assert decode_in_pieces(STREAM, size) == EXPECTED


def test_bare_carriage_returns_and_a_missing_final_blank_line() -> None:
    assert decode_in_pieces(b"data: x\r\rdata: y", 4) == [SSEEvent(None, b"x"), SSEEvent(None, b"y")]


def test_frame_round_trips() -> None:
    for event in (SSEEvent(None, b'{"k":"v"}'), SSEEvent("message_start", b'{"k":"v"}')):
        assert SSEDecoder().feed(frame(event)) == [event]


def test_an_event_past_the_cap_raises_however_it_arrives() -> None:
    for pieces in ([b"data: " + b"x" * 100], [b"data: ", b"x" * 50, b"x" * 50],
                   [b": ping\r\n"] * 20, [b"data: a\n\ndata: " + b"y" * 100 + b"\n\n"]):
        decoder = SSEDecoder(max_event_bytes=64)
        with pytest.raises(EventTooLarge):
            for piece in pieces:
                decoder.feed(piece)


def test_events_up_to_the_cap_pass_in_any_split() -> None:
    data = STREAM * 50
    for size in (1, 4, 9, 4096):
        decoder = SSEDecoder(max_event_bytes=64)
        events = []
        for start in range(0, len(data), size):
            events += decoder.feed(data[start:start + size])
        assert events + decoder.flush() == EXPECTED * 50


@pytest.mark.parametrize("read", [
    b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n",                     # whole events, one read
    b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n",             # with \r\n line ends
    b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\n\n",     # a comment between
    b"data: {\"a\":1}\n\nevent: x\ndata: {\"b\":2}\n\n",           # a named event
    b"data: {\"a\":1}\rdata: {\"b\":2}\n\n",                       # a bare \r inside one event
])
def test_several_events_in_one_read_decode_as_they_would_one_by_one(read: bytes) -> None:
    one_by_one = decode_in_pieces(read, 1)
    decoder = SSEDecoder()
    assert decoder.feed(read) + decoder.flush() == one_by_one


@pytest.mark.parametrize("read", [
    b"data: {\"a\":1}\n\n",
    b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n",
    b"data: \n\n",
])
def test_a_read_of_whole_plain_events_is_its_payloads_as_feed_decodes_them(read: bytes) -> None:
    payloads = SSEDecoder().whole_data_events(read)
    assert payloads is not None
    assert [SSEEvent(None, payload) for payload in payloads] == decode_in_pieces(read, 1)
    assert b"".join(frame(SSEEvent(None, payload)) for payload in payloads) == read


@pytest.mark.parametrize("read", [
    b"data: {\"a\":1}\r\n\r\n",                     # other line ends
    b"data: {\"a\":1}\r\n\n",
    b"data: {\"a\":\r1}\n\n",
    b"data: {\"a\":\n1}\n\n",                       # a second line in the event
    b"data: one\ndata: two\n\n",
    b"data:{\"a\":1}\n\n",                          # no space after the colon
    b"event: x\ndata: {\"a\":1}\n\n",               # a named event
    b": keep-alive\n\n",
    b"data: {\"a\":1}\n\n: keep-alive\n\n",
    b"data: {\"a\":1}\n\n\ndata: {\"b\":2}\n\n",    # a stray line end between events
    b"data: {\"a\":1}\n\n\n\n",
    b"data: {\"a\":1}\n",                           # the event not yet whole
    b"data: {\"a\":1}\n\ndata: {\"b\":2}",
    b"data: {\"a\":1}\nX",
    b"data: {\"a\":1}\n\ndata:{\"b\":2}\n\n",          # a later event without the space
    b"data: {\"a\":1}\n\ndata: {\"b\":\n2}\n\n",       # a second line in a later event
    b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\n",
    b"data: {\"a\":1}\n\nevent: x\ndata: {\"b\":2}\n\n",
])
def test_any_other_read_is_left_to_feed(read: bytes) -> None:
    assert SSEDecoder().whole_data_events(read) is None


def test_a_read_after_a_partial_event_is_left_to_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: {\"a\"") == []
    assert decoder.whole_data_events(b"data: {\"b\":2}\n\n") is None
    assert decoder.feed(b":1}\n\n") == [SSEEvent(None, b"{\"a\":1}")]
    assert decoder.whole_data_events(b"data: {\"b\":2}\n\n") == [b"{\"b\":2}"]


def test_a_read_of_several_events_past_the_cap_is_left_to_feed() -> None:
    read = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n"
    assert SSEDecoder(len(read)).whole_data_events(read) is not None
    assert SSEDecoder(len(read) - 1).whole_data_events(read) is None


@pytest.mark.parametrize("read", [
    b"event: response.created\ndata: {\"a\":1}\n\n",
    b"event: a\ndata: {\"a\":1}\n\nevent: b\ndata: {\"b\":2}\n\nevent: c\ndata: {\"c\":3}\n\n",
    b"event: \ndata: \n\n",
])
def test_a_read_of_whole_named_events_is_their_names_and_payloads_as_feed_decodes_them(read: bytes) -> None:
    events = SSEDecoder().whole_named_events(read)
    assert events is not None
    assert [SSEEvent(name.decode(), payload) for name, payload in events] == decode_in_pieces(read, 1)
    assert b"".join(frame(SSEEvent(name.decode(), payload)) for name, payload in events) == read


@pytest.mark.parametrize("read", [
    b"event: a\r\ndata: {\"a\":1}\r\n\r\n",          # other line ends
    b"event: a\ndata: {\"a\":\r1}\n\n",
    b"event: a\ndata: {\"a\":1}\ndata: {\"b\":2}\n\n",  # a second data line
    b"event: a\ndata: {\"a\":\n1}\n\n",
    b"data: {\"a\":1}\n\n",                          # a plain event
    b"event: a\ndata: {\"a\":1}\n\ndata: {\"b\":2}\n\n",
    b"event: a\ndata:{\"a\":1}\n\n",                 # no space after the colon
    b"event:a\ndata: {\"a\":1}\n\n",
    b"event: a\nid: 1\n\n",
    b"event: a\n: keep-alive\ndata: {\"a\":1}\n\n",
    b"event: a\ndata: {\"a\":1}\n\n: keep-alive\n\n",
    b"event: a\ndata: {\"a\":1}\n\n\nevent: b\ndata: {\"b\":2}\n\n",   # a stray line end
    b"event: a\ndata: {\"a\":1}\n\n\n",
    b"event: a\ndata: {\"a\":1}\n",                  # the event not yet whole
    b"event: a\ndata: {\"a\":1}\n\nevent: b\ndata: {\"b\":2}",
    b"event: a\ndata: {\"a\":1}X\n",
    b"event: a\n",
    b"event: a",
    b"event: a\n\nevent: b\ndata: {\"b\":2}\n\n",            # an event without data
    b"event: a\ndata: {\"a\":1}\n\nevent: b\ndata:{\"b\":2}\n\n",
    b"event: a\ndata: {\"a\":1}\n\nevent: b\ndata: {\"b\":2}\ndata: x\n\n",
    b"event: a\ndata: {\"a\":1}\n\nevent: b\n\n",
])
def test_any_other_read_is_left_to_feed_as_a_named_one(read: bytes) -> None:
    assert SSEDecoder().whole_named_events(read) is None


def test_a_named_read_after_a_partial_event_or_past_the_cap_is_left_to_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: {\"a\"") == []
    assert decoder.whole_named_events(b"event: b\ndata: {\"b\":2}\n\n") is None
    assert decoder.feed(b":1}\n\n") == [SSEEvent("a", b"{\"a\":1}")]
    assert decoder.whole_named_events(b"event: b\ndata: {\"b\":2}\n\n") == [(b"b", b"{\"b\":2}")]
    read = b"event: a\ndata: {\"a\":1}\n\n"
    assert SSEDecoder(len(read)).whole_named_events(read) is not None
    assert SSEDecoder(len(read) - 1).whole_named_events(read) is None
