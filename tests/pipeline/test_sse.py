"""SSE decoding: whatever way the bytes are cut, the same events come out."""

from __future__ import annotations

import pytest

from truckllm.pipeline.sse import SSEDecoder, frame
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
