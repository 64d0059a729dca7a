"""The Responses event stream as the client receives it: the relay's framed events pass
as they are, except that an upstream failure after the start (which the relay reports as
an OpenAI error object) becomes `response.failed`, the event the official SDKs and Codex
end a broken stream on, with the next sequence number and the output items finished so
far. The finished response (from response.completed / .incomplete / .failed) is handed
to `on_final`, for the store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from truckllm.pipeline.dispatch import StreamReply
from truckllm.pipeline.sse import SSEDecoder, frame
from truckllm.pipeline.stream import Writer
from truckllm.protocols.responses.answer import failed
from truckllm.providers.base import SSEEvent

# What the reframer must read: the frame, finished items, the end, and failures.
_NOTABLE = re.compile(rb'response\.(?:created|output_item\.done|completed|incomplete|failed)|'
                      rb'data: \{"error"')
_SEQUENCE = re.compile(rb'"sequence_number":\s*(\d+)')
_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesReframer:
    """Per-stream state: framed relay events in, the client's Responses events out."""

    def __init__(self, on_final: Callable[[dict[str, Any]], None]) -> None:
        self._decoder = SSEDecoder()
        self._on_final = on_final
        self._frame: dict[str, Any] | None = None
        self._output: list[dict[str, Any]] = []
        self._last = b""                # the last events passed on: their sequence number
                                        # is read only if a failure has to follow them

    def reframe(self, reply: StreamReply) -> StreamReply:
        inner = reply.write_rest

        async def write_rest(write: Writer) -> bytes:
            async def client(framed: bytes) -> None:
                out = self._events(framed)
                if out:
                    await write(out)

            last = await inner(client)
            return self._events(last) if last else b""

        return StreamReply(self._events(reply.first), write_rest, reply.upstream_use,
                           release=reply.release)

    def _events(self, framed: bytes) -> bytes:
        if _NOTABLE.search(framed) is None:
            self._last = framed
            return framed               # deltas and the like: as the relay framed them
        out: list[bytes] = []
        for event in self._decoder.feed(framed):
            if event.data.startswith(b'{"error"'):
                self._last = b"".join(out) or self._last     # events just before it count
                out.append(self._failed(orjson.loads(event.data).get("error") or {}))
                continue
            self._read(event)
            out.append(frame(event))
        self._last = b"".join(out)
        return self._last

    def _read(self, event: SSEEvent) -> None:
        if event.event == "response.created":
            self._frame = orjson.loads(event.data)["response"]
        elif event.event == "response.output_item.done":
            self._output.append(orjson.loads(event.data)["item"])
        elif event.event in _FINAL:
            self._on_final(orjson.loads(event.data)["response"])

    def _failed(self, error: dict[str, Any]) -> bytes:
        if self._frame is None:
            return b""
        numbers = _SEQUENCE.findall(self._last)
        sequence = int(numbers[-1]) + 1 if numbers else 0
        response = failed(self._frame, self._output, error)
        self._on_final(response)
        return frame(SSEEvent("response.failed", orjson.dumps(
            {"type": "response.failed", "sequence_number": sequence, "response": response})))
