"""The benchmark's fast fake OpenAI upstream: a raw asyncio protocol on uvloop that
answers /v1/chat/completions and /v1/responses from precomputed bytes, so that it is never
the bottleneck.

Non-streaming requests get one chat.completion with Content-Length. Requests whose body
has `"stream": true` get an SSE stream (role chunk, N content chunks, finish chunk,
usage chunk, [DONE]) in chunked encoding, the first event with the headers and the rest
spaced by a fixed gap, like a model emitting tokens. /v1/responses answers the same text
as a response object, or as the Responses API's named events (created, in_progress,
item and part added, N deltas, text, part and item done, completed). Run: python -m bench.fake_upstream
--port P [--chunks 20 --gap-ms 1]. Imports nothing from truckllm.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from dataclasses import dataclass
from typing import cast

import orjson
import uvloop

MODEL = "gpt-4o-mini"
CREATED = 1_700_000_000
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def build_json_response() -> bytes:
    body = orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": MODEL,
        "system_fingerprint": "fp_bench", "service_tier": "default",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "refusal": None, "annotations": [],
                                 "content": "Hello! This is the benchmark's fixed answer."}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
    })
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


def build_stream_events(chunks: int) -> list[bytes]:
    """Each SSE event already framed as one HTTP chunk; the last one ends the body."""
    envelope = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
                "model": MODEL, "system_fingerprint": "fp_bench"}

    def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**envelope, "choices": [choice], "usage": None}

    payloads = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    payloads += [chunk({"content": f" token{i}"}, None) for i in range(chunks)]
    payloads.append(chunk({}, "stop"))
    payloads.append({**envelope, "choices": [],
                     "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}})
    events = [b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads] + [b"data: [DONE]\n\n"]
    framed = [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events]
    framed[-1] += b"0\r\n\r\n"
    return framed


def build_responses_json() -> bytes:
    body = orjson.dumps(_response("completed", "Hello! This is the benchmark's fixed answer.", 9))
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


def _message(text: str) -> dict[str, object]:
    return {"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _response(status: str, text: str | None, output_tokens: int) -> dict[str, object]:
    output = [] if text is None else [_message(text)]
    return {"id": "resp_bench", "object": "response", "created_at": CREATED, "status": status,
            "error": None, "incomplete_details": None, "instructions": None, "model": MODEL,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": None if text is None else {
                "input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 12 + output_tokens}}


def build_responses_events(chunks: int) -> list[bytes]:
    """The Responses API stream of the same tokens, each event one HTTP chunk."""
    text = "".join(f" token{i}" for i in range(chunks))
    done = _response("completed", text, chunks)
    item = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    payloads: list[dict[str, object]] = [
        {"type": "response.created", "response": _response("in_progress", None, 0)},
        {"type": "response.in_progress", "response": _response("in_progress", None, 0)},
        {"type": "response.output_item.added", "output_index": 0, "item": {
            "id": "msg_bench", "type": "message", "status": "in_progress", "role": "assistant", "content": []}},
        {"type": "response.content_part.added", **item, "part": part},
        *({"type": "response.output_text.delta", **item, "delta": f" token{i}", "logprobs": []}
          for i in range(chunks)),
        {"type": "response.output_text.done", **item, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **item, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": _message(text)},
        {"type": "response.completed", "response": done},
    ]
    events = [b"event: " + str(p["type"]).encode() + b"\ndata: "
              + orjson.dumps({"type": p["type"], "sequence_number": n, **p}) + b"\n\n"
              for n, p in enumerate(payloads)]
    framed = [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events]
    framed[-1] += b"0\r\n\r\n"
    return framed


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"x-request-id: req_bench\r\nTransfer-Encoding: chunked\r\n\r\n")


@dataclass(frozen=True)
class Answers:
    chat_json: bytes
    chat_events: list[bytes]
    responses_json: bytes
    responses_events: list[bytes]


class FakeUpstream(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered strictly in order."""

    def __init__(self, answers: Answers, gap_s: float) -> None:
        self.answers = answers
        self.stream_events = answers.chat_events
        self.gap_s = gap_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = False       # a stream in progress: later requests wait for it
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.answer_complete_requests()

    def answer_complete_requests(self) -> None:
        while not self.streaming and self.transport is not None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            match = CONTENT_LENGTH.search(self.buffer, 0, head_end + 2)
            length = int(match.group(1)) if match else 0
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            responses = self.buffer.startswith(b"POST /v1/responses ")
            body, self.buffer = self.buffer[head_end + 4:end], self.buffer[end:]
            if STREAM_FLAG.search(body):
                self.stream_events = (self.answers.responses_events if responses
                                      else self.answers.chat_events)
                self.start_stream()
            else:
                self.transport.write(self.answers.responses_json if responses
                                     else self.answers.chat_json)

    def start_stream(self) -> None:
        assert self.transport is not None
        self.streaming = True
        self.transport.write(STREAM_HEAD + self.stream_events[0])
        self.loop.call_later(self.gap_s, self.send_event, 1)

    def send_event(self, index: int) -> None:
        if self.transport is None:
            return
        self.transport.write(self.stream_events[index])
        if index + 1 < len(self.stream_events):
            self.loop.call_later(self.gap_s, self.send_event, index + 1)
            return
        self.streaming = False
        self.answer_complete_requests()


async def serve(port: int, chunks: int, gap_ms: float) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers(build_json_response(), build_stream_events(chunks), build_responses_json(),
                      build_responses_events(chunks))
    server = await loop.create_server(
        lambda: FakeUpstream(answers, gap_ms / 1000), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=1.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.chunks, args.gap_ms))


if __name__ == "__main__":
    main()
