"""A fake OpenAI upstream for tests: speaks the real wire format, records what it got.

Owns an aiohttp app on 127.0.0.1 serving /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models and /v1/responses (the Responses API; `responses=False` makes
a server without it, as many OpenAI-compatible servers are). By default it answers like OpenAI would (deterministic
text derived from the prompt, usage counts, SSE streams, tool calls when the request has
tools and the last user message asks for one). A test scripts the next answers with
`fake.script(Scripted(...))`: a status and body, extra headers, a delay, a hang, a
dropped connection, a slow stream. Imports nothing from truckllm: it stands for the
outside world.

    async with make_openai_fake() as fake:
        client = AsyncOpenAI(base_url=fake.url, api_key="sk-test")
        ...
        assert fake.requests[0].body["model"] == "gpt-4o-mini"
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.responses_wire import ResponsesAnswer

CREATED = 1_700_000_000
FINGERPRINT = "fp_fake0001"
HANG_LIMIT_S = 30.0          # a hanging answer never outlives this, even if nobody cancels it
DISCONNECT_POLL_S = 0.005
TOOL_WORDS = re.compile(r"\b(tool|tools|call|function|weather)\b", re.IGNORECASE)

ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. `headers` keys are lower case."""

    method: str
    path: str
    headers: Mapping[str, str]
    raw: bytes
    body: Any                   # parsed JSON, or None when the body was empty or not JSON
    disconnected: asyncio.Event = field(default_factory=asyncio.Event, compare=False)
    """Set when the fake saw the caller go away before the answer was complete."""
    received_at: float = field(default_factory=lambda: asyncio.get_running_loop().time(),
                               compare=False)
    """The event loop's clock when the request arrived."""


@dataclass(frozen=True)
class Scripted:
    """One scripted answer, used once, by the next request whose path matches.

    status/body: a non-2xx status without body gets an OpenAI-shaped error body; a 200
    without body gets the normal generated answer. `chunks` replaces a stream's events
    (dicts become JSON, str/bytes are sent as the `data:` payload as is; `[DONE]` is
    appended unless `done=False`). `raw` sends exact bytes instead of JSON.
    """

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str | None = None              # e.g. "/v1/embeddings"; None matches any POST
    delay_s: float = 0.0                 # before the status line
    hang: bool = False                   # never answer (until the caller leaves)
    drop: bool = False                   # close the connection without answering
    drop_after_chunks: int | None = None # stream: close the connection after N events
    chunk_delay_s: float = 0.0           # stream: pause before each event
    chunks: Sequence[Any] | None = None
    done: bool = True
    text: str | None = None              # the reply text instead of the generated one


class OpenAIFake:
    """The running fake: `.url` (ends in /v1), `.requests`, `.script(...)`."""

    def __init__(self, models: Sequence[str] = ("gpt-4o-mini", "text-embedding-3-small"),
                 responses: bool = True) -> None:
        self.responses = responses
        self.requests: list[RecordedRequest] = []
        self.models = list(models)
        self.url = ""
        self._scripted: deque[Scripted] = deque()
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()

    def script(self, *answers: Scripted) -> None:
        """Queue answers for the next matching requests, in order."""
        self._scripted.extend(answers)

    @property
    def pending_scripts(self) -> int:
        return len(self._scripted)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        if self.responses:
            app.router.add_post("/v1/responses", self._responses)
        return app

    def close(self) -> None:
        """Release hanging answers so the server can stop at once."""
        self._closing.set()

    # -- handlers ---------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        recorded, scripted = await self._receive(request)
        early = await self._answer_scripted(request, recorded, scripted)
        if early is not None:
            return early
        body = recorded.body if isinstance(recorded.body, dict) else {}
        reply = ChatReply.from_request(body, scripted.text, f"chatcmpl-fake{next(self._ids)}")
        headers = self._headers(scripted)
        if body.get("stream"):
            events = scripted.chunks if scripted.chunks is not None else reply.stream_events(body)
            return await self._stream(request, recorded, scripted, events, headers)
        payload = scripted.body if scripted.body is not None else reply.response()
        return _json(payload, scripted.status, headers)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        recorded, scripted = await self._receive(request)
        early = await self._answer_scripted(request, recorded, scripted)
        if early is not None:
            return early
        body = recorded.body if isinstance(recorded.body, dict) else {}
        reply = CompletionReply.from_request(body, scripted.text, f"cmpl-fake{next(self._ids)}")
        headers = self._headers(scripted)
        if body.get("stream"):
            events = scripted.chunks if scripted.chunks is not None else reply.stream_events(body)
            return await self._stream(request, recorded, scripted, events, headers)
        payload = scripted.body if scripted.body is not None else reply.response()
        return _json(payload, scripted.status, headers)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        recorded, scripted = await self._receive(request)
        early = await self._answer_scripted(request, recorded, scripted)
        if early is not None:
            return early
        body = recorded.body if isinstance(recorded.body, dict) else {}
        answer = ResponsesAnswer(str(body.get("model") or ""), body)
        headers = self._headers(scripted)
        if body.get("stream"):      # named events, already framed; no [DONE] in this API
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
            await response.prepare(request)
            for event in answer.events():
                await response.write(event.encode())
            await response.write_eof()
            return response
        payload = scripted.body if scripted.body is not None else answer.response()
        return _json(payload, scripted.status, headers)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        recorded, scripted = await self._receive(request)
        early = await self._answer_scripted(request, recorded, scripted)
        if early is not None:
            return early
        body = recorded.body if isinstance(recorded.body, dict) else {}
        payload = scripted.body if scripted.body is not None else embeddings_response(body)
        return _json(payload, scripted.status, self._headers(scripted))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        data = [_model_object(name) for name in self.models]
        return _json({"object": "list", "data": data}, 200, {})

    async def _model(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        name = request.match_info["model"]
        if name not in self.models:
            return _json(error_body(404, f"The model '{name}' does not exist"), 404, {})
        return _json(_model_object(name), 200, {})

    # -- plumbing ---------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        recorded = RecordedRequest(request.method, request.path, headers, raw, body)
        self.requests.append(recorded)
        return recorded

    async def _receive(self, request: web.Request) -> tuple[RecordedRequest, Scripted]:
        recorded = await self._record(request)
        return recorded, self._next_script(request.path)

    def _next_script(self, path: str) -> Scripted:
        for index, scripted in enumerate(self._scripted):
            if scripted.path is None or scripted.path == path:
                del self._scripted[index]
                return scripted
        return Scripted()

    def _headers(self, scripted: Scripted) -> dict[str, str]:
        headers = {
            "x-request-id": f"req_fake{len(self.requests)}",
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
        }
        headers.update(scripted.headers)
        return headers

    async def _answer_scripted(
        self, request: web.Request, recorded: RecordedRequest, scripted: Scripted
    ) -> web.StreamResponse | None:
        """The answers that do not depend on the endpoint; None means carry on."""
        if scripted.delay_s:
            await self._wait_or_leave(request, recorded, scripted.delay_s)
        if scripted.hang:
            await self._wait_or_leave(request, recorded, HANG_LIMIT_S)
            return _json(error_body(504, "fake hang released"), 504, {})
        if scripted.drop:
            _abort(request)
            return web.Response(status=500)     # never reaches anyone: the socket is gone
        if scripted.raw is not None:
            return web.Response(
                body=scripted.raw, status=scripted.status,
                headers={"Content-Type": scripted.content_type, **scripted.headers},
            )
        if scripted.status >= 300:
            payload = scripted.body if scripted.body is not None else error_body(scripted.status)
            return _json(payload, scripted.status, self._headers(scripted))
        return None

    async def _wait_or_leave(self, request: web.Request, recorded: RecordedRequest, limit_s: float) -> None:
        """Sleep up to limit_s; stop early (and note it) if the caller disconnects."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        try:
            while loop.time() < deadline and not self._closing.is_set():
                if _caller_gone(request):
                    recorded.disconnected.set()
                    return
                await asyncio.sleep(min(DISCONNECT_POLL_S, max(0.0, deadline - loop.time())))
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the connection is lost (handler_cancellation).
            recorded.disconnected.set()
            raise

    async def _stream(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        scripted: Scripted,
        events: Sequence[Any],
        headers: Mapping[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=scripted.status,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers},
        )
        await response.prepare(request)
        try:
            for count, event in enumerate(events):
                if scripted.drop_after_chunks is not None and count >= scripted.drop_after_chunks:
                    _abort(request)
                    return response
                if scripted.chunk_delay_s:
                    await self._wait_or_leave(request, recorded, scripted.chunk_delay_s)
                    if recorded.disconnected.is_set():
                        return response
                await response.write(sse_event(event))
            if scripted.done:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError) as gone:
            recorded.disconnected.set()
            if isinstance(gone, asyncio.CancelledError):
                raise
        return response


# -- reply builders (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class ChatReply:
    id: str
    model: str
    pieces: list[str]
    prompt_tokens: int
    tool_call: dict[str, Any] | None

    @classmethod
    def from_request(cls, body: Mapping[str, Any], text: str | None, reply_id: str) -> ChatReply:
        messages = body.get("messages") or []
        last_user = _last_user_text(messages)
        tool_call = _tool_call_for(body.get("tools"), last_user)
        reply = text if text is not None else f"Fake reply to: {last_user}".strip()
        return cls(
            id=reply_id,
            model=str(body.get("model", "")),
            pieces=split_pieces(reply),
            prompt_tokens=sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict)),
            tool_call=tool_call,
        )

    def usage(self) -> dict[str, Any]:
        completion = len(self.pieces) if self.tool_call is None else 5
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.pieces),
                                   "refusal": None, "annotations": []}
        finish = "stop"
        if self.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [self.tool_call]
            finish = "tool_calls"
        return {
            **self._envelope("chat.completion"),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": self.usage(),
        }

    def stream_events(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        deltas = self._tool_deltas() if self.tool_call is not None else self._text_deltas()
        finish = "tool_calls" if self.tool_call is not None else "stop"
        events = [self._chunk(delta, None, extra) for delta in deltas]
        events.append(self._chunk({}, finish, extra))
        if include_usage:
            events.append({**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage()})
        return events

    def _text_deltas(self) -> list[dict[str, Any]]:
        first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        return [first, *({"content": piece} for piece in self.pieces)]

    def _tool_deltas(self) -> list[dict[str, Any]]:
        assert self.tool_call is not None
        call, arguments = self.tool_call, self.tool_call["function"]["arguments"]
        half = len(arguments) // 2
        opening = {"index": 0, "id": call["id"], "type": "function",
                   "function": {"name": call["function"]["name"], "arguments": ""}}
        return [
            {"role": "assistant", "content": None, "tool_calls": [opening]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
        ]

    def _chunk(self, delta: dict[str, Any], finish: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._envelope("chat.completion.chunk"), "choices": [choice], **extra}

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": CREATED, "model": self.model,
                "system_fingerprint": FINGERPRINT, "service_tier": "default"}


@dataclass(frozen=True)
class CompletionReply:
    id: str
    model: str
    pieces: list[str]
    prompt_tokens: int

    @classmethod
    def from_request(cls, body: Mapping[str, Any], text: str | None, reply_id: str) -> CompletionReply:
        prompt = body.get("prompt", "")
        prompt_text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        reply = text if text is not None else f" Fake completion of: {prompt_text}"
        return cls(reply_id, str(body.get("model", "")), split_pieces(reply), _count_words(prompt_text))

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.pieces),
                "total_tokens": self.prompt_tokens + len(self.pieces)}

    def response(self) -> dict[str, Any]:
        choice = {"text": "".join(self.pieces), "index": 0, "logprobs": None, "finish_reason": "stop"}
        return {**self._envelope(), "choices": [choice], "usage": self.usage()}

    def stream_events(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        events = []
        for position, piece in enumerate(self.pieces):
            finish = "stop" if position == len(self.pieces) - 1 else None
            choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}
            events.append({**self._envelope(), "choices": [choice], **extra})
        if include_usage:
            events.append({**self._envelope(), "choices": [], "usage": self.usage()})
        return events

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": CREATED,
                "model": self.model, "system_fingerprint": FINGERPRINT}


def embeddings_response(body: Mapping[str, Any]) -> dict[str, Any]:
    inputs = body.get("input", "")
    items = [inputs] if isinstance(inputs, str) or _is_token_list(inputs) else list(inputs)
    dimensions = int(body.get("dimensions") or 8)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = embedding_vector(str(item), dimensions)
        encoded: Any = _floats_to_base64(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(_count_words(str(item)) for item in items)
    return {"object": "list", "data": data, "model": str(body.get("model", "")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """Deterministic values exactly representable in float32, so base64 round-trips."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128.0 for i in range(dimensions)]


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    error_type, code = ERROR_TYPES.get(status, ("server_error", None))
    text = message or f"Fake upstream error {status}"
    return {"error": {"message": text, "type": error_type, "param": None, "code": code}}


def split_pieces(text: str) -> list[str]:
    """Words with their leading space, so joining the pieces gives the text back."""
    pieces = re.findall(r"\s*\S+", text)
    if pieces and text[len("".join(pieces)):]:
        pieces[-1] += text[len("".join(pieces)):]
    return pieces or [text]


def sse_event(event: Any) -> bytes:
    if isinstance(event, bytes):
        payload = event
    elif isinstance(event, str):
        payload = event.encode()
    else:
        payload = orjson.dumps(event)
    return b"data: " + payload + b"\n\n"


def _tool_call_for(tools: Any, last_user: str) -> dict[str, Any] | None:
    if not tools or not isinstance(tools, list) or not TOOL_WORDS.search(last_user):
        return None
    function = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
    arguments = orjson.dumps({"query": last_user}).decode()
    return {"id": "call_fake0001", "type": "function",
            "function": {"name": str(function.get("name", "tool")), "arguments": arguments}}


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _count_words(content: Any) -> int:
    return len(_content_text(content).split()) or 1


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _floats_to_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "fake"}


def _json(payload: Any, status: int, headers: Mapping[str, str]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        headers={"Content-Type": "application/json", **headers})


def _caller_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        with suppress(Exception):
            transport.abort()


@asynccontextmanager
async def make_openai_fake(models: Sequence[str] = ("gpt-4o-mini", "text-embedding-3-small"),
                           responses: bool = True) -> AsyncIterator[OpenAIFake]:
    """Start a fake on 127.0.0.1 with a free port; yields it with `.url` set."""
    fake = OpenAIFake(models, responses)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/v1"))
    try:
        yield fake
    finally:
        fake.close()
        await server.close()
