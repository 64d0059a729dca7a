"""Server-Sent Events framing: incremental decoding of upstream bytes and encoding for
clients. The only module that knows how events are framed. Pure, no I/O."""

from __future__ import annotations

from truckllm.errors import UpstreamFailed
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

    Linear in the bytes fed, however an event is cut: the partial event grows in place and
    only new bytes are searched for its end. With `max_event_bytes`, a partial event (its
    comment lines included) that grows past it raises `EventTooLarge`: an upstream that
    never ends an event cannot make the gateway hold it without bound.
    """

    __slots__ = ("_buffer", "_max", "_scanned")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buffer = bytearray()      # the partial event, its line ends made \n
        self._scanned = 0               # no event end in _buffer before this index
        self._max = max_event_bytes

    def whole_data_events(self, read: bytes) -> list[bytes] | None:
        """The payloads of `read` when it is whole events framed exactly as `frame` frames
        an unnamed one (`data: <payload>\\n\\n` each, no other line end) and nothing is held
        from before; None for any other read, which `feed` takes. A translator may then
        handle the read whole (providers.base.ReadFeeder)."""
        # `find` rather than `in`: `bytes in bytes` first tries its operand as an integer.
        end = len(read) - 2
        if read.find(b"\n") == end:      # one event: the common read of a stream
            if (read[-1] == 10 and read[:6] == b"data: " and read.find(b"\r") < 0
                    and not self._buffer):
                return [read[6:end]]
            return None
        # Several: the payloads are what lies between the first `data: `, each
        # `\n\ndata: ` and the last `\n\n`, when no other line end is in the read (each
        # event then holds two: its blank line's).
        if (read[:6] != b"data: " or read[-2:] != b"\n\n" or self._buffer
                or (self._max is not None and len(read) > self._max)):
            return None
        payloads = read[6:-2].split(b"\n\ndata: ")
        if read.count(b"\n") != 2 * len(payloads) or read.find(b"\r") >= 0:
            return None
        return payloads

    def whole_named_events(self, read: bytes) -> list[tuple[bytes, bytes]] | None:
        """The (name, payload) of each event of `read` when it is whole named events
        framed exactly as `frame` frames one (`event: <name>\\ndata: <payload>\\n\\n` each,
        no other line end), as a Responses stream's are, and nothing is held from before;
        None for any other read, which `feed` takes (providers.base.NamedReadFeeder)."""
        if (self._buffer or read[:7] != b"event: " or read.find(b"\r") >= 0
                or (self._max is not None and len(read) > self._max)):
            return None
        first = read.find(b"\n")
        end = len(read) - 2
        if read.find(b"\n", first + 1) == end:       # one event: the common read of a stream
            if read[-1] == 10 and read[first + 1:first + 7] == b"data: ":
                return [(read[7:first], read[first + 7:end])]
            return None
        # Several: each event's `<name>\ndata: <payload>` lies between the first `event: `,
        # each `\n\nevent: ` and the last `\n\n`, when no other line end is in the read
        # (each event then holds three).
        blocks = read[7:-2].split(b"\n\nevent: ")
        if read[-2:] != b"\n\n" or read.count(b"\n") != 3 * len(blocks):
            return None
        events = []
        for block in blocks:
            name, found, data = block.partition(b"\ndata: ")
            if not found:
                return None
            events.append((name, data))
        return events

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer
        if not buffer and chunk.endswith(b"\n\n"):
            # The common reads: whole `data:` events of one line each, nothing held from
            # before. Such a read is lines that alternate between a `data:` line and a
            # blank one (line ends \n, \r or \r\n).
            lines = chunk.splitlines()
            if len(lines) == 2:
                if not lines[1] and lines[0].startswith(b"data: "):
                    return [SSEEvent(None, lines[0][6:])]
            elif (not len(lines) % 2 and not any(lines[1::2])
                  and (self._max is None or len(chunk) <= self._max)):
                events = []
                for line in lines[::2]:
                    if not line.startswith(b"data: "):
                        break
                    events.append(SSEEvent(None, line[6:]))
                else:
                    return events
        if buffer and buffer[-1] == 13:        # a \r held back: half of a \r\n, maybe
            buffer.pop()
            chunk = b"\r" + chunk
        held = False
        if b"\r" in chunk:
            # A trailing \r may be half of a \r\n split across chunks: wait for more.
            held = chunk.endswith(b"\r")
            if held:
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer += chunk
        end = buffer.rfind(b"\n\n", max(0, self._scanned - 1))
        if end < 0:
            self._scanned = len(buffer)
            if held:
                buffer.append(13)
            if self._max is not None and len(buffer) > self._max:
                self._buffer, self._scanned = bytearray(), 0
                raise EventTooLarge(self._max)
            return []
        blocks = bytes(buffer[:end]).split(b"\n\n")
        del buffer[:end + 2]
        self._scanned = len(buffer)
        if held:
            buffer.append(13)
        if self._max is not None and (len(buffer) > self._max
                                      or any(len(block) > self._max for block in blocks)):
            self._buffer, self._scanned = bytearray(), 0
            raise EventTooLarge(self._max)
        events = []
        for block in blocks:
            event = _parse_lines(block.split(b"\n"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """The last event when the body ended without a blank line."""
        block = bytes(self._buffer).rstrip(b"\r\n")
        self._buffer, self._scanned = bytearray(), 0
        event = _parse_lines(block.replace(b"\r", b"\n").split(b"\n")) if block else None
        return [event] if event is not None else []


class EventTooLarge(UpstreamFailed):
    """An upstream event grew past the decoder's `max_event_bytes`: an upstream failure
    (the next attempt before the first byte, an error event after it)."""

    def __init__(self, max_event_bytes: int) -> None:
        super().__init__(f"upstream sent an SSE event larger than {max_event_bytes} bytes",
                         code="upstream_event_too_large")


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
