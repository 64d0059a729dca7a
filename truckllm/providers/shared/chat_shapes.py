"""Builds the OpenAI shapes the translating adapters answer with: `chat.completion` and
`text_completion` bodies, and streams of chunks in the order the official SDKs rely on.

Pure, no I/O. Imports only base, usage and errors. Every translated stream goes through
ChunkStream, so the SDK invariants (SPEC §4) are enforced in one place:
role first and once; a tool call's id/type/name once, then argument fragments by index;
finish_reason alone in its own chunk after the last delta; the usage chunk only when the
client asked for it, exactly once, last.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from truckllm.providers.base import CallContext, SSEEvent
from truckllm.usage import Usage

Kind = Literal["chat", "completions"]


@dataclass(frozen=True, slots=True)
class ToolCallOut:
    id: str
    name: str
    arguments: str          # JSON text, as OpenAI sends it


@dataclass(slots=True)
class ChoiceOut:
    index: int = 0
    text: str = ""
    tool_calls: list[ToolCallOut] = field(default_factory=list)
    finish_reason: str = "stop"
    reasoning: str = ""                              # `reasoning_content`, when carried
    reasoning_state: dict[str, Any] | None = None    # `reasoning_state`, when carried


def kind_of(operation: str) -> Kind:
    return "completions" if operation == "completions" else "chat"


def response_id(kind: Kind, upstream_id: str | None, ctx: CallContext) -> str:
    prefix = "cmpl-" if kind == "completions" else "chatcmpl-"
    return prefix + (upstream_id or ctx.request_id)


def usage_body(usage: Usage) -> dict[str, Any]:
    body = usage.to_openai()
    if usage.cache_write_tokens:
        details = body.setdefault("prompt_tokens_details", {"cached_tokens": usage.cache_read_tokens})
        details["cache_write_tokens"] = usage.cache_write_tokens
    return body


def build_response(kind: Kind, ctx: CallContext, upstream_id: str | None, choices: list[ChoiceOut],
                   usage: Usage | None, legacy_functions: bool = False) -> bytes:
    body: dict[str, Any] = {
        "id": response_id(kind, upstream_id, ctx),
        "object": "text_completion" if kind == "completions" else "chat.completion",
        "created": ctx.created,
        "model": ctx.alias,
        "choices": [_choice(kind, choice, legacy_functions, ctx.carry_reasoning) for choice in choices],
    }
    if usage is not None:
        body["usage"] = usage_body(usage)
    return orjson.dumps(body)


def _choice(kind: Kind, choice: ChoiceOut, legacy: bool, carry_reasoning: bool) -> dict[str, Any]:
    if kind == "completions":
        return {"text": choice.text, "index": choice.index, "logprobs": None,
                "finish_reason": choice.finish_reason}
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.text or (None if choice.tool_calls else ""),
        "refusal": None,
    }
    if carry_reasoning and choice.reasoning:
        message["reasoning_content"] = choice.reasoning
    if carry_reasoning and choice.reasoning_state is not None:
        message["reasoning_state"] = choice.reasoning_state
    finish = choice.finish_reason
    if choice.tool_calls and legacy:
        first = choice.tool_calls[0]     # the legacy dialect carries one call only
        message["function_call"] = {"name": first.name, "arguments": first.arguments}
        finish = "function_call" if finish == "tool_calls" else finish
    elif choice.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in choice.tool_calls
        ]
    return {"index": choice.index, "message": message, "logprobs": None, "finish_reason": finish}


class ChunkStream:
    """Emits one choice's chunks. Upstream-specific translators call it as events arrive."""

    def __init__(self, kind: Kind, ctx: CallContext, legacy_functions: bool = False,
                 index: int = 0) -> None:
        self._kind = kind
        self._ctx = ctx
        self._legacy = legacy_functions
        self._index = index
        self.id = response_id(kind, None, ctx)
        self._started = False
        self._tool_count = 0
        self.finished = False
        self._usage_sent = False

    def set_upstream_id(self, upstream_id: str | None) -> None:
        if upstream_id and not self._started:
            self.id = response_id(self._kind, upstream_id, self._ctx)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def tool_count(self) -> int:
        return self._tool_count

    def start(self) -> list[SSEEvent]:
        """The role chunk, once (completions streams have no role and send nothing)."""
        if self._started:
            return []
        self._started = True
        if self._kind == "completions":
            return []
        return [self._chunk({"role": "assistant", "content": ""})]

    def text(self, text: str) -> list[SSEEvent]:
        if not text or self.finished:
            return []
        out = self.start()
        if self._kind == "completions":
            out.append(self._completion_chunk(text, None))
        else:
            out.append(self._chunk({"content": text}))
        return out

    def reasoning(self, text: str) -> list[SSEEvent]:
        """Reasoning text (`reasoning_content`), only when the context carries reasoning."""
        if not text or self.finished or not self._ctx.carry_reasoning or self._kind == "completions":
            return []
        return [*self.start(), self._chunk({"reasoning_content": text})]

    def reasoning_state(self, state: dict[str, Any]) -> list[SSEEvent]:
        """A finished piece of the provider's reasoning state (`reasoning_state`), only
        when the context carries reasoning."""
        if self.finished or not self._ctx.carry_reasoning or self._kind == "completions":
            return []
        return [*self.start(), self._chunk({"reasoning_state": state})]

    def tool_start(self, call_id: str, name: str, arguments: str = "") -> tuple[int, list[SSEEvent]]:
        """Announces a tool call; returns its OpenAI index and the chunks to send."""
        index = self._tool_count
        self._tool_count += 1
        out = self.start()
        if self._kind == "completions" or self.finished:
            return index, out
        if self._legacy:
            if index == 0:
                out.append(self._chunk({"function_call": {"name": name, "arguments": arguments}}))
            return index, out
        call = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments}}
        out.append(self._chunk({"tool_calls": [call]}))
        return index, out

    def tool_arguments(self, index: int, fragment: str) -> list[SSEEvent]:
        if not fragment or self._kind == "completions" or self.finished:
            return []
        if self._legacy:
            return [self._chunk({"function_call": {"arguments": fragment}})] if index == 0 else []
        return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})]

    def finish(self, reason: str) -> list[SSEEvent]:
        if self.finished:
            return []
        out = self.start()
        self.finished = True
        if self._tool_count and reason == "stop":
            reason = "tool_calls"       # some upstreams end a tool turn with a plain stop
        if self._legacy and reason == "tool_calls":
            reason = "function_call"
        if self._kind == "completions":
            out.append(self._completion_chunk("", reason))
        else:
            out.append(self._chunk({}, reason))
        return out

    def usage(self, usage: Usage | None) -> list[SSEEvent]:
        """The usage chunk: only when the client asked for it, and only once."""
        if not self._ctx.include_usage or self._usage_sent:
            return []
        self._usage_sent = True
        body = self._envelope([])
        body["usage"] = usage_body(usage or Usage())
        return [SSEEvent(None, orjson.dumps(body))]

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion" if self._kind == "completions" else "chat.completion.chunk",
            "created": self._ctx.created,
            "model": self._ctx.alias,
            "choices": choices,
        }
        if self._ctx.include_usage:
            body["usage"] = None
        return body

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> SSEEvent:
        choice = {"index": self._index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return SSEEvent(None, orjson.dumps(self._envelope([choice])))

    def _completion_chunk(self, text: str, finish_reason: str | None) -> SSEEvent:
        choice = {"text": text, "index": self._index, "logprobs": None, "finish_reason": finish_reason}
        return SSEEvent(None, orjson.dumps(self._envelope([choice])))


def build_embeddings(ctx: CallContext, vectors: list[list[float]], usage: Usage) -> bytes:
    """An OpenAI embeddings list; base64 little-endian float32 when the client asked for it
    (the official SDKs ask by default and decode it)."""
    as_base64 = ctx.client_body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i,
         "embedding": floats_to_base64(vector) if as_base64 else vector}
        for i, vector in enumerate(vectors)
    ]
    return orjson.dumps({
        "object": "list",
        "data": data,
        "model": ctx.alias,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    })


def encode_float_embeddings(body: dict[str, Any]) -> bool:
    """Rewrites float-array embeddings in an OpenAI embeddings list as base64, in place.

    For a client that asked for base64 when the upstream answered floats anyway (older
    Azure api-versions, some OpenAI-compatible servers): the Node SDK decodes every
    embedding as base64 when it asked, and a float array decodes to garbage. True when
    anything changed.
    """
    changed = False
    for item in body.get("data") or []:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list) and all(isinstance(v, int | float) for v in vector):
            item["embedding"] = floats_to_base64([float(v) for v in vector])
            changed = True
    return changed


def floats_to_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def estimate_tokens(text: str) -> int:
    """Rough count for upstreams that report none (about four characters a token)."""
    return max(1, (len(text) + 3) // 4) if text else 0
