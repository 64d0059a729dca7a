"""Anthropic Messages API <-> OpenAI chat completions, both directions, streams included.

Pure translation, no I/O; must not import transport, dispatch or server modules.
Operations: chat, completions (answered through chat), and messages and count_tokens
(the Anthropic Messages API spoken natively: the body passes through with only `model`
rewritten).
Settings (AnthropicProvider): `anthropic_version` (header value), `default_max_tokens`
(sent when the client gives no max tokens, since Anthropic requires it).
Thinking: chat's `reasoning_effort` turns it on (providers.shared.reasoning's budgets);
thinking blocks come back in chat's reasoning extension fields when the context carries
reasoning, and an assistant message's `reasoning_state` goes back as those blocks in place.
"""

from __future__ import annotations

import functools
import re
from types import MappingProxyType
from typing import Any

import orjson

from truckllm.config.schema import AnthropicProvider
from truckllm.errors import InvalidRequest, UpstreamFailed
from truckllm.protocols.anthropic_messages import MESSAGES_STREAM, without_sealed_thinking
from truckllm.providers.base import (
    CallContext,
    Operation,
    OperationSpec,
    ParsedResponse,
    ProviderSpec,
    SSEEvent,
    Target,
    UpstreamErrorInfo,
    UpstreamKey,
    UpstreamRequest,
)
from truckllm.providers.shared.chat_request import (
    ChatRequest,
    Media,
    Reasoning,
    Text,
    ToolChoice,
    ToolResult,
    ToolUse,
    Turn,
    chat_body_from_completions,
    read_chat_request,
    refuse,
    uses_legacy_functions,
)
from truckllm.providers.shared.chat_shapes import (
    ChoiceOut,
    ChunkStream,
    ToolCallOut,
    build_response,
    kind_of,
)
from truckllm.providers.shared.reasoning import reasoning_state, state_blocks, thinking_budget
from truckllm.providers.shared.tool_ids import stand_in
from truckllm.providers.shared.upstream_errors import (
    context_overflow_code,
    decode_json,
    error_object,
    error_type_for_status,
    fallback_message,
    to_gateway_error,
)
from truckllm.usage import Usage

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error types -> the status a client sees (SPEC §5: 529 overloaded -> 503).
STATUS_BY_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 502,
    "timeout_error": 504,
    "overloaded_error": 503,
}


# ---- request ------------------------------------------------------------------------------


def _settings(target: Target) -> tuple[str, int]:
    """The `anthropic-version` header and default max_tokens of the target's provider."""
    settings = target.settings
    if isinstance(settings, AnthropicProvider):
        return settings.anthropic_version, settings.default_max_tokens
    return DEFAULT_VERSION, DEFAULT_MAX_TOKENS


def build_request(operation: Operation, body: dict[str, Any], target: Target, key: UpstreamKey,
                  ctx: CallContext) -> UpstreamRequest:
    path = "/messages/count_tokens" if operation == "count_tokens" else "/messages"
    if operation in ("messages", "count_tokens"):
        payload = {**without_sealed_thinking(body), "model": target.model}
    elif operation in ("chat", "completions"):
        chat_body = chat_body_from_completions(body) if operation == "completions" else body
        payload = to_messages_request(read_chat_request(chat_body), target, ctx.stream)
    else:
        raise InvalidRequest(f"provider type 'anthropic' cannot serve {operation}", code="unsupported_operation")
    headers = {
        "content-type": "application/json",
        "anthropic-version": _settings(target)[0],
        **target.headers,
        **(ctx.forward_headers if operation in ("messages", "count_tokens") else {}),
        "x-api-key": key.value,
    }
    return UpstreamRequest("POST", target.base_url + path, headers, orjson.dumps(payload),
                           bool(payload.get("stream")) and operation != "count_tokens")


def to_messages_request(request: ChatRequest, target: Target, stream: bool) -> dict[str, Any]:
    _refuse_unsupported(request)
    payload: dict[str, Any] = {
        "model": target.model,
        "max_tokens": request.max_tokens or _settings(target)[1],
    }
    if request.system:
        payload["system"] = [{"type": "text", "text": text} for text in request.system]
    payload["messages"] = _messages(request.turns)
    budget = _thinking_budget(request)
    if budget is not None:
        payload["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if payload["max_tokens"] <= budget:
            # Anthropic counts thinking within max_tokens and wants room above the budget:
            # the client's limit is kept for the answer itself.
            payload["max_tokens"] += budget
    if request.temperature is not None and budget is None:
        # Anthropic's range is 0..1; with thinking on it accepts no temperature at all.
        payload["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None and request.top_p < 1 and (budget is None or request.top_p >= 0.95):
        # top_p 1 samples from everything, as if unset; sending it anyway fails on newer
        # models, which refuse temperature and top_p together (OpenAI clients often send both).
        # With thinking on, Anthropic accepts only 0.95..1.
        payload["top_p"] = request.top_p
    if request.stop:
        payload["stop_sequences"] = request.stop
    if request.tools:
        payload["tools"] = [
            {"name": tool.name, **({"description": tool.description} if tool.description else {}),
             "input_schema": tool.parameters or {"type": "object", "properties": {}}}
            for tool in request.tools
        ]
    tool_choice = _tool_choice(request.tool_choice, request.parallel_tool_calls, bool(request.tools))
    if tool_choice is not None:
        payload["tool_choice"] = tool_choice
    if request.response_format is not None:
        schema = request.response_format["json_schema"]["schema"]
        payload["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if request.user:
        payload["metadata"] = {"user_id": request.user}
    if stream:
        payload["stream"] = True
    return payload


def _refuse_unsupported(request: ChatRequest) -> None:
    if request.n > 1:
        raise refuse("anthropic", "n > 1", "n")
    if request.audio_output:
        raise refuse("anthropic", "audio output", "modalities")
    if request.logprobs:
        raise refuse("anthropic", "logprobs", "logprobs")
    if request.response_format is not None and request.response_format["type"] == "json_object":
        raise refuse("anthropic", "response_format json_object (use json_schema)", "response_format")


def _thinking_budget(request: ChatRequest) -> int | None:
    """The thinking budget for the request's reasoning_effort, or None for no thinking:
    also when a tool is forced (Anthropic refuses thinking with a forced tool) and when the
    request continues a tool call whose thinking block did not come back (a client that
    does not keep reasoning: Anthropic refuses a tool-use turn without its thinking block
    while thinking is on, and accepts the turn finished without thinking)."""
    budget = thinking_budget(request.reasoning_effort)
    if budget is None or (request.tool_choice is not None and request.tool_choice.mode in ("required", "function")):
        return None
    last = next((turn for turn in reversed(request.turns) if turn.role == "assistant"), None)
    if last is not None and any(isinstance(b, ToolUse) for b in last.blocks):
        first = last.blocks[0]
        if not (isinstance(first, Reasoning) and state_blocks(first.state, "anthropic")):
            return None
    return budget


def _messages(turns: list[Turn]) -> list[dict[str, Any]]:
    messages = [{"role": turn.role, "content": [out for block in turn.blocks for out in _blocks(block)]}
                for turn in turns]
    messages = [m for m in messages if m["content"]]
    if not messages or messages[0]["role"] != "user":
        # Anthropic requires the conversation to open with a user turn.
        messages.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continue)"}]})
    return messages


def _blocks(block: Text | Media | ToolUse | ToolResult | Reasoning) -> list[dict[str, Any]]:
    if isinstance(block, Reasoning):
        # Anthropic's own thinking blocks go back as they came, signatures and all; another
        # provider's reasoning (a conversation moved here on fallback) means nothing here.
        return [b for b in state_blocks(block.state, "anthropic")
                if b.get("type") in ("thinking", "redacted_thinking")]
    return [_block(block)]


def _block(block: Text | Media | ToolUse | ToolResult) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolUse):
        return {"type": "tool_use", "id": tool_id(block.id), "name": block.name, "input": block.arguments}
    if isinstance(block, ToolResult):
        return {"type": "tool_result", "tool_use_id": tool_id(block.tool_call_id), "content": block.content}
    return _media_block(block)


def tool_id(call_id: str) -> str:
    """A tool-call id Anthropic accepts (`^[a-zA-Z0-9_-]+$`). Ids from other providers may
    not be (Gemini's carry a base64 thought signature: `+`, `/`, `=`) when a conversation
    moves here on fallback; they are replaced by a stable digest, the same for the call and
    its result."""
    if _TOOL_ID.fullmatch(call_id):
        return call_id
    return stand_in("toolu_", call_id, 24)


def _media_block(media: Media) -> dict[str, Any]:
    if media.kind == "image":
        if media.url is not None:
            return {"type": "image", "source": {"type": "url", "url": media.url}}
        if media.mime not in IMAGE_TYPES:
            raise refuse("anthropic", f"image type {media.mime!r}", media.param)
        return {"type": "image", "source": {"type": "base64", "media_type": media.mime, "data": media.data}}
    if media.kind == "file" and media.mime == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": media.mime, "data": media.data}}
    raise refuse("anthropic", f"{media.kind} input ({media.mime})", media.param)


def _tool_choice(choice: ToolChoice | None, parallel: bool | None, has_tools: bool) -> dict[str, Any] | None:
    if not has_tools or (choice is None and parallel is not False):
        return None             # Anthropic only accepts tool_choice alongside tools
    mode = choice.mode if choice is not None else "auto"
    rendered: dict[str, Any]
    if mode == "function" and choice is not None:
        rendered = {"type": "tool", "name": choice.name}
    else:
        rendered = {"type": {"auto": "auto", "none": "none", "required": "any"}[mode]}
    if parallel is False and mode != "none":
        rendered["disable_parallel_tool_use"] = True
    return rendered


# ---- response -----------------------------------------------------------------------------


def parse_response(operation: Operation, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
    message = decode_json(raw)
    if operation == "count_tokens":
        if not isinstance(message, dict) or not isinstance(message.get("input_tokens"), int):
            raise UpstreamFailed("upstream answered count_tokens with an unexpected body")
        return ParsedResponse(raw, None)        # free: nothing is charged
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamFailed("upstream answered with a body that is not an Anthropic message")
    usage = usage_from(message.get("usage"))
    if operation == "messages":
        return ParsedResponse(orjson.dumps({**message, "model": ctx.alias}), usage)
    blocks = [b for b in message["content"] if isinstance(b, dict)]
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    calls = [
        ToolCallOut(str(b.get("id")), str(b.get("name")), orjson.dumps(b.get("input") or {}).decode())
        for b in blocks if b.get("type") == "tool_use"
    ]
    finish = FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    thinking = [b for b in blocks if b.get("type") in ("thinking", "redacted_thinking")]
    choice = ChoiceOut(text=text, tool_calls=calls, finish_reason=finish,
                       reasoning="".join(str(b.get("thinking") or "") for b in thinking),
                       reasoning_state=reasoning_state("anthropic", thinking) if thinking else None)
    upstream_id = str(message.get("id") or "").removeprefix("msg_") or None
    body = build_response(kind_of(operation), ctx, upstream_id, [choice], usage, uses_legacy_functions(ctx.client_body))
    return ParsedResponse(body, usage)


_USAGE_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def merge_counts(counts: dict[str, int], raw: Any) -> dict[str, int]:
    """Overlay the counts present in an Anthropic usage object (stream usage is cumulative)."""
    if isinstance(raw, dict):
        for name in _USAGE_KEYS:
            value = raw.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[name] = value
    return counts


def usage_from(raw: Any) -> Usage:
    return usage_of(merge_counts({}, raw))


def usage_of(counts: dict[str, int]) -> Usage:
    """Anthropic counts fresh input apart from cache reads and writes; OpenAI sums them."""
    read = counts.get("cache_read_input_tokens", 0)
    write = counts.get("cache_creation_input_tokens", 0)
    return Usage(prompt_tokens=counts.get("input_tokens", 0) + read + write,
                 completion_tokens=counts.get("output_tokens", 0),
                 cache_read_tokens=read, cache_write_tokens=write)


# ---- stream -------------------------------------------------------------------------------


class AnthropicStreamTranslator:
    """Anthropic SSE events -> OpenAI chunks (chat or text_completion)."""

    def __init__(self, operation: Operation, ctx: CallContext) -> None:
        self._out = ChunkStream(kind_of(operation), ctx, uses_legacy_functions(ctx.client_body))
        self.usage: Usage | None = None
        self._counts: dict[str, int] = {}
        self._tools: dict[int, int] = {}           # Anthropic block index -> OpenAI tool index
        self._tool_has_args: dict[int, bool] = {}
        self._thinking: dict[int, dict[str, Any]] = {}   # Anthropic block index -> the block so far
        self._finish: str | None = None
        self._done = False

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        data = decode_json(event.data)
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event.event
        if kind == "message_start":
            message = data.get("message") or {}
            self._out.set_upstream_id(str(message.get("id") or "").removeprefix("msg_") or None)
            self.usage = usage_of(merge_counts(self._counts, message.get("usage")))
            # The role chunk waits for content: an error event right after message_start
            # (overload, say) then fails the attempt before anything reached the client,
            # so dispatch can still try another target.
            return []
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta") or {})
        if kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        if kind == "message_delta":
            self.usage = usage_of(merge_counts(self._counts, data.get("usage")))
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason:
                self._finish = FINISH_REASONS.get(str(reason), "stop")
                return self._out.finish(self._finish)
            return []
        if kind == "message_stop":
            self._done = True
            return [*self._out.finish(self._finish or "stop"), *self._out.usage(self.usage)]
        if kind == "error":
            raise to_gateway_error(error_info_from_event(data))
        return []                                   # ping and anything new

    def close(self) -> list[SSEEvent]:
        if not self._done:
            raise UpstreamFailed("upstream stream ended before message_stop")
        return []

    def _block_start(self, index: Any, block: dict[str, Any]) -> list[SSEEvent]:
        if block.get("type") == "text":
            return self._out.text(str(block.get("text") or ""))
        if block.get("type") == "tool_use" and isinstance(index, int):
            tool_index, out = self._out.tool_start(str(block.get("id")), str(block.get("name")))
            self._tools[index] = tool_index
            self._tool_has_args[index] = False
            return out
        if block.get("type") in ("thinking", "redacted_thinking") and isinstance(index, int):
            # Kept whole to be handed on at its end, signature included (the chat extension
            # fields, for dialects that carry reasoning).
            self._thinking[index] = dict(block)
            return self._out.reasoning(str(block.get("thinking") or ""))
        return []

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> list[SSEEvent]:
        if delta.get("type") == "text_delta":
            return self._out.text(str(delta.get("text") or ""))
        if delta.get("type") == "thinking_delta" and index in self._thinking:
            text = str(delta.get("thinking") or "")
            block = self._thinking[index]
            block["thinking"] = str(block.get("thinking") or "") + text
            return self._out.reasoning(text)
        if delta.get("type") == "signature_delta" and index in self._thinking:
            self._thinking[index]["signature"] = str(delta.get("signature") or "")
            return []
        if delta.get("type") == "input_json_delta" and index in self._tools:
            fragment = str(delta.get("partial_json") or "")
            if fragment:
                self._tool_has_args[index] = True
            return self._out.tool_arguments(self._tools[index], fragment)
        return []

    def _block_stop(self, index: Any) -> list[SSEEvent]:
        if index in self._thinking:
            return self._out.reasoning_state(reasoning_state("anthropic", [self._thinking.pop(index)]))
        if index in self._tools and not self._tool_has_args[index]:
            return self._out.tool_arguments(self._tools[index], "{}")   # no-argument tools
        return []


class NativeMessagesStream:
    """Anthropic events passed through for Anthropic clients: only `model` is rewritten,
    usage is noted, and an error event or a missing message_stop still fails the stream."""

    def __init__(self, ctx: CallContext) -> None:
        self._alias = ctx.alias
        self.usage: Usage | None = None
        self._counts: dict[str, int] = {}
        self._done = False
        self._held: SSEEvent | None = None

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        data = decode_json(event.data)
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event.event
        if kind == "error":
            raise to_gateway_error(error_info_from_event(data))
        if kind == "message_start" and isinstance(data.get("message"), dict):
            self.usage = usage_of(merge_counts(self._counts, data["message"].get("usage")))
            # Held back until the next event, so an error right after it is still retryable.
            self._held = SSEEvent("message_start", orjson.dumps(
                {**data, "message": {**data["message"], "model": self._alias}}))
            return []
        if kind == "message_delta":
            self.usage = usage_of(merge_counts(self._counts, data.get("usage")))
        if kind == "ping" and self._held is not None:
            return []
        self._done = self._done or kind == "message_stop"
        held, self._held = self._held, None
        out = SSEEvent(str(data.get("type") or "message"), event.data)
        return [held, out] if held else [out]

    def close(self) -> list[SSEEvent]:
        if not self._done:
            raise UpstreamFailed("upstream stream ended before message_stop")
        return []


def new_stream_translator(operation: Operation, target: Target,
                          ctx: CallContext) -> AnthropicStreamTranslator:
    return AnthropicStreamTranslator(operation, ctx)


def new_native_stream(target: Target, ctx: CallContext) -> NativeMessagesStream:
    return NativeMessagesStream(ctx)


# ---- errors -------------------------------------------------------------------------------


def parse_error(status: int, body: bytes) -> UpstreamErrorInfo:
    error = error_object(body)
    if error is None:
        mapped = 503 if status == 529 else status
        return UpstreamErrorInfo(mapped, error_type_for_status(mapped), fallback_message(status, body))
    return _info(status, error)


def error_info_from_event(data: dict[str, Any]) -> UpstreamErrorInfo:
    error = data.get("error")
    if not isinstance(error, dict):
        error = {}
    status = STATUS_BY_ERROR_TYPE.get(str(error.get("type")), 502)
    return _info(status, error)


def _info(status: int, error: dict[str, Any]) -> UpstreamErrorInfo:
    message = str(error.get("message") or "upstream error")
    kind = str(error.get("type") or "")
    if status == 529 or kind == "overloaded_error":
        return UpstreamErrorInfo(503, "overloaded_error", message, code="overloaded")
    code = {"rate_limit_error": "rate_limit_exceeded", "request_too_large": "request_too_large",
            "not_found_error": "model_not_found"}.get(kind) or context_overflow_code(message)
    return UpstreamErrorInfo(status, error_type_for_status(status), message, code=code)


def build_probe(target: Target, key: str) -> UpstreamRequest:
    """`GET /models`: free, and answers 401 for a bad key (routing's health checks)."""
    headers = {"anthropic-version": _settings(target)[0], **target.headers, "x-api-key": key}
    return UpstreamRequest("GET", f"{target.base_url}/models", headers, None, False)


def _translated(op: Operation) -> OperationSpec:
    return OperationSpec(functools.partial(build_request, op), functools.partial(parse_response, op),
                         functools.partial(new_stream_translator, op))


def _native(op: Operation, streams: bool) -> OperationSpec:
    """The Messages API spoken to an Anthropic upstream: passed through, Anthropic's own
    stream events (named) and error event."""
    return OperationSpec(functools.partial(build_request, op), functools.partial(parse_response, op),
                         new_native_stream if streams else None, stream_ending=MESSAGES_STREAM)


SPEC = ProviderSpec(
    type="anthropic",
    default_base_url=DEFAULT_BASE_URL,
    operations=MappingProxyType({
        Operation.CHAT: _translated(Operation.CHAT),
        Operation.COMPLETIONS: _translated(Operation.COMPLETIONS),
        Operation.MESSAGES: _native(Operation.MESSAGES, streams=True),
        Operation.COUNT_TOKENS: _native(Operation.COUNT_TOKENS, streams=False),
    }),
    parse_error=parse_error,
    build_probe=build_probe,
)
