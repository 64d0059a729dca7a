"""The Responses event stream as the client receives it: each relayed event framed with its
`event:` name (its `type`), no `[DONE]` line, and an upstream failure after the start
(which the relay frames as an OpenAI error object) turned into `response.failed`, the
event the official SDKs and Codex end a broken stream on. The finished response (from
response.completed / .incomplete / .failed) is handed to `on_final`, for the store.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from truckllm.pipeline.dispatch import StreamReply
from truckllm.pipeline.sse import SSEDecoder, frame_event
from truckllm.protocols.responses.answer import failed

_LEADING_TYPE = re.compile(rb'^\{"type":"([a-z_.]+)","sequence_number":(\d+)')
_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose payload the reframer reads: the frame, finished items, the end.
_READ = frozenset({"response.created", "response.output_item.done"}) | _FINAL


class ResponsesReframer:
    """Per-stream state: framed relay events in, named Responses events out."""

    def __init__(self, on_final: Callable[[dict[str, Any]], None]) -> None:
        self._decoder = SSEDecoder()
        self._on_final = on_final
        self._frame: dict[str, Any] | None = None
        self._output: list[dict[str, Any]] = []
        self._sequence = -1

    def reframe(self, reply: StreamReply) -> StreamReply:
        return StreamReply(self._events(reply.first), self._rest(reply.rest), reply.upstream_use,
                           release=reply.release)

    async def _rest(self, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        try:
            async for framed in rest:
                out = self._events(framed)
                if out:
                    yield out
        finally:
            await rest.aclose()

    def _events(self, framed: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._decoder.feed(framed):
            data = event.data
            if data == b"[DONE]":
                continue
            if data.startswith(b'{"error"'):
                out.append(self._failed(orjson.loads(data).get("error") or {}))
                continue
            match = _LEADING_TYPE.match(data)
            if match is not None:       # compact, `type` and `sequence_number` first: ours, OpenAI's
                name, self._sequence = match.group(1).decode(), int(match.group(2))
                if name in _READ:
                    self._read(name, orjson.loads(data))
            else:                       # an upstream's other spacing or key order
                event = orjson.loads(data)
                kind = event.get("type") if isinstance(event, dict) else None
                if not isinstance(kind, str):
                    continue            # never forwarded unnamed
                name = kind
                if isinstance(event.get("sequence_number"), int):
                    self._sequence = event["sequence_number"]
                if name in _READ:
                    self._read(name, event)
            out.append(frame_event(name, data))
        return b"".join(out)

    def _read(self, name: str, event: dict[str, Any]) -> None:
        if name == "response.created":
            self._frame = event["response"]
        elif name == "response.output_item.done":
            self._output.append(event["item"])
        else:
            self._on_final(event["response"])

    def _failed(self, error: dict[str, Any]) -> bytes:
        if self._frame is None:
            return b""
        self._sequence += 1
        response = failed(self._frame, self._output, error)
        self._on_final(response)
        return frame_event("response.failed", orjson.dumps(
            {"type": "response.failed", "sequence_number": self._sequence, "response": response}))
