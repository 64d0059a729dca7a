"""The built-in `mock` provider: deterministic OpenAI-format answers, no network.

It speaks the OpenAI wire format from inside the process, so everything after the
transport (pass-through streaming, model rewriting, usage) runs exactly as for a real
OpenAI upstream. The same request always gets the same answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from truckllm.config.schema import MockProvider
from truckllm.providers import openai
from truckllm.providers.base import ProviderSpec, Target, UpstreamRequest, WholeResponse
from truckllm.usage import Usage

if TYPE_CHECKING:
    from truckllm.runtime.state import CompiledProvider

_PER_MESSAGE_OVERHEAD = 3
MAX_EMBEDDING_DIM = 8192
_DEFAULTS = MockProvider(id="mock", type="mock")     # for a target built without settings


class LocalResponse:
    """An UpstreamResponse produced in-process: a body, or SSE events paced by a delay."""

    def __init__(self, status: int, body: bytes = b"", events: list[bytes] | None = None,
                 latency_s: float = 0.0, chunk_delay_s: float = 0.0) -> None:
        self.status = status
        content_type = "text/event-stream" if events is not None else "application/json"
        self.headers: Mapping[str, str] = {"Content-Type": content_type}
        self._body = body
        self._events = events or []
        self._next = 0                  # the event `read_chunk` hands out next
        self._latency_s = latency_s
        self._chunk_delay_s = chunk_delay_s

    async def read(self) -> bytes:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        return self._body

    async def read_chunk(self, marked: bool = True) -> bytes:
        index, events = self._next, self._events
        self._next = index + 1
        if index == 0:
            if self._latency_s:
                await asyncio.sleep(self._latency_s)
        elif self._chunk_delay_s and index < len(events):
            await asyncio.sleep(self._chunk_delay_s)
        return events[index] if index < len(events) else b""

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_chunk():
            yield chunk

    def watch_idle(self) -> None:
        return None                     # paced in-process: never stalls

    def close(self) -> None:
        return None


class MockTransport:
    """The mock's own transport: answers in-process whatever the provider is asked, like
    httpx's MockTransport, so nothing between dispatch and the network knows it exists."""

    async def send(self, provider: CompiledProvider, target: Target, request: UpstreamRequest,
                   request_id: str) -> LocalResponse:
        return respond(request, target)

    async def fetch(self, provider: CompiledProvider, target: Target, request: UpstreamRequest,
                    request_id: str) -> WholeResponse:
        response = respond(request, target)
        return response.status, response.headers, await response.read()


def respond(request: UpstreamRequest, target: Target) -> LocalResponse:
    body = orjson.loads(request.body or b"{}")
    settings = target.settings if isinstance(target.settings, MockProvider) else _DEFAULTS
    latency_s = settings.latency_ms / 1000
    delay_s = settings.chunk_delay_ms / 1000
    path = request.url.rsplit("/", 2)
    if request.url.endswith("/embeddings"):
        dimensions = body.get("dimensions") or settings.embedding_dim
        if not 1 <= dimensions <= MAX_EMBEDDING_DIM:
            return _refusal(f"'dimensions' must be between 1 and {MAX_EMBEDDING_DIM} for the mock",
                            "dimensions")
        vectors = _embeddings(body, dimensions)
        return LocalResponse(200, orjson.dumps(vectors), latency_s=latency_s)
    kind = "text_completion" if path[-1] == "completions" and path[-2] != "chat" else "chat"
    answer = _Answer(body, kind)
    if request.stream:
        return LocalResponse(200, events=answer.events(), latency_s=latency_s, chunk_delay_s=delay_s)
    return LocalResponse(200, orjson.dumps(answer.response()), latency_s=latency_s)


def _refusal(message: str, param: str) -> LocalResponse:
    """A 400 in OpenAI's error shape, as a real upstream would send it."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return LocalResponse(400, orjson.dumps({"error": error}))


class _Answer:
    """One deterministic answer to a chat or text completion request."""

    def __init__(self, body: dict[str, Any], kind: str) -> None:
        self.kind = kind
        self.model = str(body.get("model", "mock"))
        self.choices = max(1, int(body.get("n") or 1))
        prompt = _prompt_text(body) if kind == "chat" else _completion_prompt(body)
        self.tool = _forced_tool(body) if kind == "chat" else None
        self.words = [f"{w} " for w in f"You said: {_last_user_text(body) if kind == 'chat' else prompt}".split()] or ["… "]
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self.finish = "tool_calls" if self.tool else "stop"
        if isinstance(limit, int) and 0 < limit < len(self.words) and not self.tool:
            self.words, self.finish = self.words[:limit], "length"
        self.words[-1] = self.words[-1].rstrip()
        digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + digest[:24]
        self.created = 1_700_000_000
        self.usage = Usage(prompt_tokens=estimate_tokens(prompt) + _PER_MESSAGE_OVERHEAD * len(body.get("messages") or [1]),
                           completion_tokens=len(self.words) if not self.tool else 8)

    def response(self) -> dict[str, Any]:
        text = "".join(self.words)
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": None if self.tool else text, "refusal": None}
            if self.tool:
                message["tool_calls"] = [self._tool_call(i) for i in range(1)]
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": self.finish}
                       for i in range(self.choices)]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": self.finish}
                       for i in range(self.choices)]
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage.to_openai(), "system_fingerprint": "fp_mock"}

    def events(self) -> list[bytes]:
        chunks = [self._chunk(delta, None) for delta in self._deltas()]
        chunks.append(self._chunk({} if self.kind == "chat" else "", self.finish))
        chunks.append(self._usage_chunk())
        return [openai_frame(chunk) for chunk in chunks] + [b"data: [DONE]\n\n"]

    def _deltas(self) -> list[Any]:
        if self.kind != "chat":
            return list(self.words)
        first: dict[str, Any] = {"role": "assistant", "content": "" if not self.tool else None}
        if self.tool:
            call = self._tool_call(0)
            arguments = call["function"]["arguments"]
            head = {"index": 0, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            half = len(arguments) // 2
            return [first, {"tool_calls": [head]},
                    {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
                    {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}]
        return [first, *({"content": word} for word in self.words)]

    def _chunk(self, delta: Any, finish: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            choices = [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                       for i in range(self.choices)]
            obj = "chat.completion.chunk"
        else:
            choices = [{"index": i, "text": delta, "logprobs": None, "finish_reason": finish}
                       for i in range(self.choices)]
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "fp_mock", "choices": choices}

    def _usage_chunk(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage.to_openai()}

    def _tool_call(self, index: int) -> dict[str, Any]:
        assert self.tool is not None
        arguments = orjson.dumps({"input": "".join(self.words)}).decode()
        return {"id": f"call_{self.id[-12:]}{index}", "type": "function",
                "function": {"name": self.tool, "arguments": arguments}}


def openai_frame(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def estimate_tokens(text: str) -> int:
    """About four characters a token: the usual rule of thumb for English BPE tokenizers."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return " ".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return " ".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The tool the mock calls: the named one, or the first when tool_choice is 'required'."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return str(name) if name else None
    if choice == "required" and tools:
        return str((tools[0].get("function") or {}).get("name", "tool"))
    return None


def _embeddings(body: dict[str, Any], dim: int) -> dict[str, Any]:
    """One vector per input; `dim` already bounded by the caller."""
    raw_input = body.get("input", "")
    inputs = raw_input if isinstance(raw_input, list) and raw_input and not isinstance(raw_input[0], int) else [raw_input]
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(orjson.dumps(item), dim)
        embedding: Any = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(estimate_tokens(i) if isinstance(i, str) else len(i) if isinstance(i, list) else 1 for i in inputs)
    return {"object": "list", "data": data, "model": str(body.get("model", "mock")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _vector(seed: bytes, dim: int) -> list[float]:
    """A unit vector drawn deterministically from the input's bytes."""
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(seed + block.to_bytes(4, "little")).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        block += 1
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


SPEC = ProviderSpec(
    type="mock",
    default_base_url="mock://local",
    operations=openai.OPERATIONS,
    parse_error=openai.parse_error,
    transport=MockTransport(),
)
