"""Server-Sent Events framing: incremental decoding of upstream bytes and encoding for
clients. The only module that knows how events are framed. Pure, no I/O."""

from __future__ import annotations

from truckllm.providers.base import SSEEvent


def frame(event: SSEEvent) -> bytes:
    """One event as the client receives it: `data:`, after `event:` when it is named (as
    Anthropic's are). Payloads are single-line JSON (or `[DONE]`)."""
    if event.event is None:
        return b"data: %b\n\n" % event.data
    return b"event: %b\ndata: %b\n\n" % (event.event.encode(), event.data)


class SSEDecoder:
    """Turns arbitrary byte chunks into whole events.

    Accepts `\\n`, `\\r\\n` and `\\r` line ends, skips comment lines (keep-alives), joins
    multi-line data, and keeps a partial event (or a lone trailing `\\r`) for the next chunk.
    Bytes stay bytes: payloads are handed on without decoding.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._buffer and chunk.endswith(b"\n\n"):
            # The common read: one whole `data:` event of one line, which is exactly two
            # line ends (each \n, \r or \r\n), a line and a blank line.
            lines = chunk.splitlines()
            if len(lines) == 2 and not lines[1] and lines[0].startswith(b"data: "):
                return [SSEEvent(None, lines[0][6:])]
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A trailing \r may be half of a \r\n split across chunks: wait for more.
            held = buffer.endswith(b"\r")
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        *blocks, rest = buffer.split(b"\n\n")
        self._buffer = rest
        events = []
        for block in blocks:
            event = _parse_lines(block.split(b"\n"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """The last event when the body ended without a blank line."""
        block, self._buffer = self._buffer.rstrip(b"\r\n"), b""
        event = _parse_lines(block.split(b"\n")) if block else None
        return [event] if event is not None else []


def _parse_lines(lines: list[bytes]) -> SSEEvent | None:
    """The event of one block's lines."""
    event_name: str | None = None
    data_lines: list[bytes] = []
    for line in lines:
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event_name = value.decode("utf-8", "replace")
    if not data_lines:
        return None
    return SSEEvent(event_name, b"\n".join(data_lines))
