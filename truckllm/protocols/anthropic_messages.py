"""The Anthropic Messages API spoken to clients (`POST /v1/messages`): its request as an
OpenAI chat request, an OpenAI answer as an Anthropic message, OpenAI chunks as Anthropic
stream events, errors in Anthropic's shape, and how its streams end. Providers that speak
Messages natively (`anthropic`) pass it through and use only the stream ending; every other
chat-speaking provider serves it through chat with DIALECT (protocols.through_chat).

Reasoning: answers through chat show the provider's reasoning as `thinking` blocks, whose
`signature` is the provider's reasoning state sealed (protocols.responses.sealed: Gemini's
thought signatures, say), so a client that sends its thinking blocks back, as Claude Code
does, hands the provider its state again on the next turn. Thinking blocks in a request
whose signature is not one this process sealed (Anthropic's own, from a turn served by
Anthropic) mean nothing to another provider and are left out; on the way to Anthropic
itself, the blocks sealed here are left out (`without_sealed_thinking`).

Pure, no I/O. Imports only errors, usage, providers.base, providers.shared.reasoning,
protocols.through_chat and protocols.responses.sealed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from truckllm.errors import GatewayError, InvalidRequest
from truckllm.protocols.responses.sealed import PREFIX, seal, unseal
from truckllm.protocols.through_chat import ChatDialect
from truckllm.providers.base import CallContext, SSEEvent, StreamEnding, StreamTranslator
from truckllm.providers.shared.reasoning import joined
from truckllm.usage import Usage

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
# Error types both APIs use with the same meaning; others are mapped by HTTP status.
SHARED_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error",
                                "not_found_error", "rate_limit_error", "overloaded_error", "timeout_error"})
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               504: "timeout_error", 529: "overloaded_error"}


# ---- request ------------------------------------------------------------------------------


def to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request (usage always asked for)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: a non-empty array is required", param="messages")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": []}
    system = _text_of(body.get("system"), "system")
    if system:
        chat["messages"].append({"role": "system", "content": system})
    tools = [_tool(tool, j) for j, tool in enumerate(body.get("tools") or ())
             if not _is_server_tool(tool)]
    if tools:
        chat["tools"] = tools
        spilled = _spill_long_descriptions(chat["tools"])
        if spilled:
            chat["messages"].append({"role": "system", "content": spilled})
    for i, message in enumerate(messages):
        chat["messages"] += _chat_messages(message, i)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    effort = reasoning_effort(body.get("thinking"), body.get("output_config"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("max_tokens") is not None:
        # Reasoning models refuse `max_tokens`; servers that only speak older chat know
        # nothing else, and they are not asked for reasoning.
        chat["max_completion_tokens" if effort is not None else "max_tokens"] = body["max_tokens"]
    _tool_choice(body.get("tool_choice"), chat)
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str) and user:
        chat["user"] = chat_user(user)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _chat_messages(message: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
        raise InvalidRequest(f"messages.{i}: role must be 'user', 'assistant' or 'system'",
                             param=f"messages.{i}.role")
    content = message.get("content")
    if message["role"] == "system":
        # A system message in the middle of the conversation (Anthropic's
        # mid-conversation-system feature): kept in place, as chat allows; providers that
        # take one system instruction (Gemini) merge it there.
        text = _text_of(content, f"messages.{i}.content")
        return [{"role": "system", "content": text}] if text else []
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise InvalidRequest(f"messages.{i}.content must be a string or an array", param=f"messages.{i}.content")
    if message["role"] == "assistant":
        return [_assistant_message(blocks, i)]
    return _user_messages(blocks, i)


def _user_messages(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    """Tool results become `tool` messages ahead of the rest of the user turn (their images
    and documents join that rest)."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
                raise InvalidRequest(f"messages.{i}.content.{j}.tool_use_id: a string is required",
                                     param=f"messages.{i}.content.{j}.tool_use_id")
            content = _text_of(block.get("content"), f"messages.{i}.content.{j}.content")
            if block.get("is_error"):
                content = f"Error: {content}"
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": content})
            # Chat tool messages carry text only: a result's images (screenshots, say) follow
            # in the user message after the tool messages rather than being lost.
            nested = block.get("content") if isinstance(block.get("content"), list) else []
            parts += [_media_part(item, f"messages.{i}.content.{j}.content.{k}")
                      for k, item in enumerate(nested)
                      if isinstance(item, dict) and item.get("type") in ("image", "document")]
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind in ("image", "document"):
            parts.append(_media_part(block, f"messages.{i}.content.{j}"))
        else:
            raise InvalidRequest(f"messages.{i}.content.{j}: block type {kind!r} cannot be translated",
                                 param=f"messages.{i}.content.{j}.type")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text and len(parts) == 1
                    else parts})
    return out


def _assistant_message(blocks: list[Any], i: int) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    state: dict[str, Any] | None = None
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise InvalidRequest(f"messages.{i}.content.{j}: a tool_use block needs a string id and name",
                                     param=f"messages.{i}.content.{j}")
            calls.append({"id": str(block.get("id")), "type": "function",
                          "function": {"name": str(block.get("name")),
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind == "thinking":
            state = joined(state, unseal(block.get("signature")))
        elif kind != "redacted_thinking":
            raise InvalidRequest(f"messages.{i}: assistant block type {kind!r} cannot be translated",
                                 param=f"messages.{i}.content")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if state is not None:
        message["reasoning_state"] = state
    return message


def without_sealed_thinking(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request for Anthropic itself: the thinking blocks sealed here (another
    provider's reasoning, from a turn served through chat) left out, since Anthropic
    refuses a signature it did not issue; an assistant message left empty goes too."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(_has_sealed_thinking(m) for m in messages):
        return body
    kept: list[Any] = []
    for message in messages:
        if _has_sealed_thinking(message):
            content = [b for b in message["content"] if not _sealed_thinking(b)]
            if not content:
                continue
            message = {**message, "content": content}
        kept.append(message)
    return {**body, "messages": kept}


def _has_sealed_thinking(message: Any) -> bool:
    return (isinstance(message, dict) and message.get("role") == "assistant"
            and isinstance(message.get("content"), list) and any(_sealed_thinking(b) for b in message["content"]))


def _sealed_thinking(block: Any) -> bool:
    return (isinstance(block, dict) and block.get("type") == "thinking"
            and str(block.get("signature") or "").startswith(PREFIX))


def thinking_block(text: str, state: dict[str, Any] | None) -> dict[str, Any]:
    """A `thinking` block of an answer through chat: the reasoning the provider showed, its
    state sealed as the signature (an empty state when it gave none: the block is still
    known for one of ours when it comes back)."""
    return {"type": "thinking", "thinking": text, "signature": seal(state or {})}


def _media_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source: dict[str, Any] = block["source"] if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url" and block.get("type") == "image" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidRequest(f"{param}: only base64 sources (and image URLs) can be translated", param=param)
    if block.get("type") == "document":
        return {"type": "file", "file": {"filename": "document.pdf", "file_data": url}}
    return {"type": "image_url", "image_url": {"url": url}}


def _text_of(value: Any, param: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(b.get("text", "")) for b in value if isinstance(b, dict) and b.get("type") == "text")
    raise InvalidRequest(f"{param} must be a string or an array of text blocks", param=param)


def _is_server_tool(tool: Any) -> bool:
    """One of Anthropic's own tools (web search, code execution, ...), which run on
    Anthropic's side and have no equivalent elsewhere: `type` names its version, and it has
    no `input_schema` of its own."""
    return (isinstance(tool, dict) and isinstance(tool.get("type"), str)
            and tool["type"] != "custom" and "input_schema" not in tool)


def dropped_tools(body: dict[str, Any]) -> tuple[str, ...]:
    """The server tools a translation leaves out of `body`, by type, in order; Claude
    Code's WebSearch sends one on every alias, and the rest of its request still works."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return ()
    return tuple(tool["type"] for tool in tools if _is_server_tool(tool))


def _tool(tool: Any, j: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or "input_schema" not in tool:
        raise InvalidRequest(f"tools.{j}: only client tools (name, input_schema) can be translated",
                             param=f"tools.{j}")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# OpenAI refuses a longer `user` (400 "string too long"); Anthropic's user_id has no such
# cap, and Claude Code's is a JSON object of ids, well past it.
_CHAT_USER_MAX = 64


def chat_user(user_id: str) -> str:
    """`metadata.user_id` as chat's `user`: as it is when short enough, else its SHA-256
    (64 hex digits), which still tells one end user from another as the field is for."""
    if len(user_id) <= _CHAT_USER_MAX:
        return user_id
    return hashlib.sha256(user_id.encode("utf-8", "surrogateescape")).hexdigest()


# Thinking budgets (tokens) at or above which a request reads as that reasoning effort.
_BUDGET_EFFORTS = ((16384, "high"), (4096, "medium"), (0, "low"))
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def reasoning_effort(thinking: Any, output_config: Any) -> str | None:
    """The chat `reasoning_effort` of a request that turns thinking on explicitly
    (`thinking.type: "enabled"`): its `output_config.effort`, else its budget's size.

    Adaptive thinking (the model decides) and a bare `output_config.effort` leave the
    target's default: chat has no adaptive mode, and models without reasoning refuse
    `reasoning_effort`, so sending it would break every request on them."""
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    if isinstance(effort, str) and effort in _EFFORTS:
        return _EFFORTS[effort]
    budget = thinking.get("budget_tokens")
    if budget is None:
        return "medium"
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise InvalidRequest("thinking.budget_tokens: a positive integer is required",
                             param="thinking.budget_tokens")
    return next(effort for floor, effort in _BUDGET_EFFORTS if budget >= floor)


# OpenAI's chat API refuses a function description longer than this (400
# string_above_max_length); Anthropic has no such cap, and Claude Code's own tools (Bash,
# Agent, ...) run to thousands of characters.
TOOL_DESCRIPTION_MAX = 1024


def _spill_long_descriptions(tools: list[dict[str, Any]]) -> str:
    """Cut each description longer than TOOL_DESCRIPTION_MAX, pointing to its full text,
    and return those full texts as one system message's content ("" when none was long):
    the model still reads every word, and no target refuses the tool."""
    spilled: list[str] = []
    for tool in tools:
        function = tool["function"]
        description = function.get("description")
        if isinstance(description, str) and len(description) > TOOL_DESCRIPTION_MAX:
            pointer = f" [...] (the full description is in the system message, under \"Tool {function['name']}\")"
            function["description"] = description[:TOOL_DESCRIPTION_MAX - len(pointer)] + pointer
            spilled.append(f"## Tool {function['name']}\n\n{description}")
    return "Full descriptions of the tools whose own are cut short:\n\n" + "\n\n".join(spilled) if spilled else ""


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "any", "none"):
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


# ---- response -----------------------------------------------------------------------------


def from_chat_response(chat: dict[str, Any], alias: str) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    state = message.get("reasoning_state")
    if (isinstance(reasoning, str) and reasoning) or isinstance(state, dict):
        content.append(thinking_block(reasoning if isinstance(reasoning, str) else "",
                                      state if isinstance(state, dict) else None))
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = list(message.get("tool_calls") or [])
    if isinstance(message.get("function_call"), dict):
        calls.append({"id": "call_legacy_0", "function": message["function_call"]})
    for call in calls:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _arguments(function.get("arguments"))})
    return {
        "id": message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": alias,
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(usage_with_writes(chat.get("usage"))),
    }


def from_chat_answer(chat: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    return from_chat_response(chat, ctx.alias)


def message_id(chat_id: Any) -> str:
    text = str(chat_id or "")
    for prefix in ("chatcmpl-", "cmpl-"):
        text = text.removeprefix(prefix)
    return "msg_" + (text or "truckllm")


def anthropic_usage(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    fresh = max(usage.prompt_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
    return {"input_tokens": fresh, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens}


def usage_with_writes(raw: Any) -> Usage | None:
    """Usage.from_openai plus the cache writes our translated answers report."""
    usage = Usage.from_openai(raw)
    details = raw.get("prompt_tokens_details") if isinstance(raw, dict) else None
    writes = details.get("cache_write_tokens") if isinstance(details, dict) else None
    if usage is not None and isinstance(writes, int) and not isinstance(writes, bool):
        usage.cache_write_tokens = writes
    return usage


def _arguments(raw: Any) -> Any:
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_raw": raw}        # Anthropic requires an object; keep what the model said
    return parsed if isinstance(parsed, dict) else {"_raw": raw}


# ---- stream -------------------------------------------------------------------------------


class AnthropicEventWriter:
    """OpenAI chat chunks in, Anthropic stream events out (named by their `type`).

    message_start comes before anything else; text and each tool call get their own
    content block (started, deltas, stopped in order); message_delta carries the stop
    reason and the final usage, then message_stop — both at `finish()`, because OpenAI's
    usage chunk arrives after the finish_reason chunk.
    """

    def __init__(self, alias: str) -> None:
        self._alias = alias
        self._started = False
        self._open: tuple[str, int] | None = None       # ("text" | "tool" | "thinking", block index)
        self._state: dict[str, Any] | None = None       # the open thinking block's provider state
        self._next_block = 0
        self._tool_blocks: dict[int, int] = {}         # OpenAI tool index -> block index
        self._stop_reason = "end_turn"
        self._usage: Usage | None = None

    def feed(self, chunk: dict[str, Any]) -> list[SSEEvent]:
        out = self._start(chunk.get("id"))
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_with_writes(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue                # Anthropic messages have one answer
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                out += self._thinking(reasoning)
            if isinstance(delta.get("reasoning_state"), dict):
                out += self._thinking("")
                self._state = joined(self._state, delta["reasoning_state"])
            if delta.get("content"):
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if isinstance(delta.get("function_call"), dict):
                out += self._tool_call({"index": 0, "id": "call_legacy_0", **{"function": delta["function_call"]}})
            if choice.get("finish_reason"):
                self._stop_reason = STOP_REASONS.get(str(choice["finish_reason"]), "end_turn")
                out += self._close_block()
        return out

    def finish(self) -> list[SSEEvent]:
        out = self._start(None) + self._close_block()
        out.append(_event("message_delta", delta={"stop_reason": self._stop_reason, "stop_sequence": None},
                          usage=anthropic_usage(self._usage)))
        out.append(_event("message_stop"))
        return out

    def _start(self, chunk_id: Any) -> list[SSEEvent]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {"id": message_id(chunk_id), "type": "message", "role": "assistant", "model": self._alias,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": anthropic_usage(None)}
        return [_event("message_start", message=message)]

    def _text(self, text: str) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._open is None or self._open[0] != "text":
            out += self._close_block()
            out += self._open_block("text", {"type": "text", "text": ""})
        assert self._open is not None
        out.append(_event("content_block_delta", index=self._open[1], delta={"type": "text_delta", "text": text}))
        return out

    def _thinking(self, text: str) -> list[SSEEvent]:
        """Reasoning text (or, empty, a piece of state) for the open thinking block, opened
        now if another block (or none) is open."""
        out: list[SSEEvent] = []
        if self._open is None or self._open[0] != "thinking":
            out += self._close_block()
            out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._state = None
        assert self._open is not None
        if text:
            out.append(_event("content_block_delta", index=self._open[1],
                              delta={"type": "thinking_delta", "thinking": text}))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[SSEEvent]:
        index = call.get("index", 0)
        function = call.get("function") or {}
        out: list[SSEEvent] = []
        if index not in self._tool_blocks:
            out += self._close_block()
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or f"toolu_{index}", "name": function.get("name"),
                     "input": {}}
            out += self._open_block("tool", block)
            assert self._open is not None
            self._tool_blocks[index] = self._open[1]
        if function.get("arguments"):
            out.append(_event("content_block_delta", index=self._tool_blocks[index],
                              delta={"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[SSEEvent]:
        self._open = (kind, self._next_block)
        self._next_block += 1
        return [_event("content_block_start", index=self._open[1], content_block=block)]

    def _close_block(self) -> list[SSEEvent]:
        if self._open is None:
            return []
        (kind, index), self._open = self._open, None
        out: list[SSEEvent] = []
        if kind == "thinking":      # as Anthropic does: the signature just before the stop
            out.append(_event("content_block_delta", index=index, delta={
                "type": "signature_delta", "signature": thinking_block("", self._state)["signature"]}))
        out.append(_event("content_block_stop", index=index))
        return out


def _event(kind: str, **fields: Any) -> SSEEvent:
    return SSEEvent(kind, orjson.dumps({"type": kind, **fields}))


def new_event_writer(ctx: CallContext) -> AnthropicEventWriter:
    return AnthropicEventWriter(ctx.alias)


# ---- errors -------------------------------------------------------------------------------


def anthropic_error(status: int | None, openai_error: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped error body as Anthropic's `{"type": "error", "error": {...}}`."""
    error: dict[str, Any] = openai_error["error"] if isinstance(openai_error.get("error"), dict) else {}
    kind = str(error.get("type") or "")
    if kind not in SHARED_ERROR_TYPES:
        kind = ERROR_TYPES.get(status or 0) or ("invalid_request_error" if status and 400 <= status < 500
                                               else "api_error")
    return {"type": "error", "error": {"type": kind, "message": str(error.get("message") or "error")}}


def _error_event(error: GatewayError, stream: StreamTranslator) -> list[SSEEvent]:
    """A failure after the stream started. Named: the Anthropic SDKs dispatch on `event:`
    and ignore events without one, so an unnamed error would be silently lost."""
    return [SSEEvent("error", orjson.dumps(anthropic_error(None, error.body())))]


# Anthropic streams end with message_stop: no `[DONE]` after it.
MESSAGES_STREAM = StreamEnding(_error_event, None)

# The Messages API on providers that speak only chat (protocols.through_chat).
DIALECT = ChatDialect(to_chat_request, from_chat_answer, new_event_writer, MESSAGES_STREAM,
                      dropped_tools, carries_reasoning=True)
