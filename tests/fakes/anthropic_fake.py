"""A fake Anthropic Messages API (POST /v1/messages, streaming and not, and
/v1/messages/count_tokens) speaking the real wire format: named SSE events, tool_use blocks with input_json_delta fragments, ping,
cumulative usage in message_delta, Anthropic's error envelope.

Default answers (to the last user turn; mid-conversation system messages are instructions,
not turns): with a shell-like tool (Claude Code's `Bash`) and a user turn asking to run
something, a call running `echo hello`; with tools and a user turn mentioning weather, tool
calls (two when it also says "and"); after tool results, a text quoting them; otherwise
"Fake reply to: ...". With thinking on (`enabled` or `adaptive`), the answer opens with a
thinking block carrying a signature, as Claude models do.
A request without a key (`x-api-key`, or a Bearer token as newer SDKs send) or without
`anthropic-version` gets 401, one without `max_tokens` or with a tool id outside
`[a-zA-Z0-9_-]` 400, and so does a `system` message inside `messages` unless
`anthropic-beta` names the mid-conversation-system feature (the real API's rule). With
thinking on, the real API's thinking rules hold too: a budget of at least 1024 below
`max_tokens`, no temperature other than 1, thinking blocks only with a signature it issued,
and a final assistant turn with tool_use opening with its thinking block.

    async with make_anthropic_fake() as fake:   # fake.url ends in /v1
        ...
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.wire_fake import (
    Reply,
    WireFake,
    json_response,
    serve,
    shell_call,
    split_text,
    sse,
    without_system,
)

MODEL_VERSION = "claude-fake-20250929"
THINKING_SIGNATURE = "EqQBCkYIBxgCKkDfakeSignature0123456789"
MID_CONVERSATION_SYSTEM = "mid-conversation-system-"


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


class AnthropicFake(WireFake):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        scripted = self.next_script(request.path)
        if scripted is not None:
            return await self.send(request, scripted)
        if not recorded.headers.get("x-api-key") or not recorded.headers.get("anthropic-version"):
            return json_response(error_body("authentication_error", "invalid x-api-key"), 401)
        body = recorded.body if isinstance(recorded.body, dict) else {}
        words = len(orjson.dumps(body.get("messages") or []).split()) + len(str(body.get("system") or "").split())
        return json_response({"input_tokens": 10 + words})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        scripted = self.next_script(request.path)
        if scripted is not None:
            return await self.send(request, scripted)
        authorised = recorded.headers.get("x-api-key") or recorded.headers.get("authorization", "").startswith("Bearer ")
        if not authorised or not recorded.headers.get("anthropic-version"):
            return json_response(error_body("authentication_error", "invalid x-api-key"), 401)
        body = recorded.body if isinstance(recorded.body, dict) else {}
        if not isinstance(body.get("max_tokens"), int):
            return json_response(error_body("invalid_request_error", "max_tokens: Field required"), 400)
        refused = _system_message_refused(body, recorded.headers.get("anthropic-beta", ""))
        if refused is not None:
            return json_response(error_body("invalid_request_error", refused), 400)
        refused = _thinking_refused(body)
        if refused is not None:
            return json_response(error_body("invalid_request_error", refused), 400)
        bad_id = _first_bad_tool_id(body)
        if bad_id is not None:
            return json_response(error_body("invalid_request_error",
                                            f"{bad_id}: String should match pattern '^[a-zA-Z0-9_-]+$'"), 400)
        answer = FakeAnswer.for_request(body, f"msg_fake{len(self.requests)}")
        if body.get("stream"):
            return await self.stream(request, answer.events())
        return json_response(answer.message())


class FakeAnswer:
    def __init__(self, message_id: str, text: str, calls: list[dict[str, Any]], input_tokens: int,
                 thinking: bool = False) -> None:
        self.id = message_id
        self.text = text
        self.calls = calls
        self.input_tokens = input_tokens
        self.thinking = thinking

    @classmethod
    def for_request(cls, body: dict[str, Any], message_id: str) -> FakeAnswer:
        messages = without_system(body.get("messages") or [])
        last = messages[-1] if messages else {}
        blocks = last.get("content") if isinstance(last.get("content"), list) else [
            {"type": "text", "text": str(last.get("content", ""))}]
        results = [b for b in blocks if b.get("type") == "tool_result"]
        text = " ".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
        words = sum(len(str(m.get("content", "")).split()) for m in messages)
        calls: list[dict[str, Any]] = []
        if results:
            reply = "Tool said: " + "; ".join(_result_text(r) for r in results)
        elif (shell := shell_call([str(t.get("name")) for t in body.get("tools") or []], text)) is not None:
            calls = [{"type": "tool_use", "id": "toolu_shell0", "name": shell[0], "input": shell[1]}]
            reply = "Running it."
        elif body.get("tools") and "weather" in text.lower():
            cities = ["Paris", "Rome"] if " and " in text else ["Paris"]
            name = body["tools"][0]["name"]
            calls = [{"type": "tool_use", "id": f"toolu_fake{i}", "name": name, "input": {"city": c}}
                     for i, c in enumerate(cities)]
            reply = "Let me check."
        else:
            reply = f"Fake reply to: {text}".strip()
        thinking = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") in ("enabled", "adaptive")
        return cls(message_id, reply, calls, max(words, 1), thinking)

    @property
    def output_tokens(self) -> int:
        return len(split_text(self.text)) + 5 * len(self.calls)

    def usage(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}

    def thinking_block(self) -> list[dict[str, Any]]:
        return [{"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE}] if self.thinking else []

    def message(self) -> dict[str, Any]:
        content = [*self.thinking_block(), {"type": "text", "text": self.text}, *self.calls]
        return {"id": self.id, "type": "message", "role": "assistant", "model": MODEL_VERSION,
                "content": content, "stop_reason": "tool_use" if self.calls else "end_turn",
                "stop_sequence": None, "usage": self.usage()}

    def events(self) -> list[str]:
        start = {**self.message(), "content": [], "stop_reason": None,
                 "usage": {**self.usage(), "output_tokens": 1}}
        events = [sse({"type": "message_start", "message": start}, "message_start")]
        text_index = 0
        if self.thinking:
            text_index = 1
            events += [_event("content_block_start", index=0, content_block={"type": "thinking", "thinking": "",
                                                                            "signature": ""}),
                       _event("content_block_delta", index=0, delta={"type": "thinking_delta",
                                                                     "thinking": "Let me think."}),
                       _event("content_block_delta", index=0, delta={"type": "signature_delta",
                                                                     "signature": THINKING_SIGNATURE}),
                       _event("content_block_stop", index=0)]
        events += [_event("content_block_start", index=text_index, content_block={"type": "text", "text": ""}),
                   sse({"type": "ping"}, "ping")]
        events += [_event("content_block_delta", index=text_index, delta={"type": "text_delta", "text": piece})
                   for piece in split_text(self.text)]
        events.append(_event("content_block_stop", index=text_index))
        for index, call in enumerate(self.calls, start=text_index + 1):
            events.append(_event("content_block_start", index=index,
                                 content_block={**call, "input": {}}))
            arguments = orjson.dumps(call["input"]).decode()
            for fragment in ("", arguments[:5], arguments[5:]):
                events.append(_event("content_block_delta", index=index,
                                     delta={"type": "input_json_delta", "partial_json": fragment}))
            events.append(_event("content_block_stop", index=index))
        stop = "tool_use" if self.calls else "end_turn"
        events.append(_event("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                             usage={"output_tokens": self.output_tokens}))
        events.append(_event("message_stop"))
        return events


def _system_message_refused(body: dict[str, Any], beta: str) -> str | None:
    """The API's refusal of a `system` message inside `messages` without the beta feature
    that allows it (clients such as Claude Code retry without it on these words)."""
    if MID_CONVERSATION_SYSTEM in beta:
        return None
    for i, message in enumerate(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "system":
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    return None


def _thinking_refused(body: dict[str, Any]) -> str | None:
    """The API's refusals around extended thinking: a budget under 1024 or not under
    max_tokens, a temperature other than 1, a thinking block whose signature it did not
    issue, and (thinking on) a final assistant turn with tool_use that does not start with
    its thinking block."""
    thinking = body.get("thinking")
    enabled = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= body["max_tokens"]:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if enabled and body.get("temperature") not in (None, 1):
        return "`temperature` may only be set to 1 when thinking is enabled"
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message.get("content"), list) else []
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "thinking" and block.get("signature") != THINKING_SIGNATURE:
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if enabled and assistant:
        i = assistant[-1]
        content = messages[i].get("content") if isinstance(messages[i].get("content"), list) else []
        kinds = [b.get("type") for b in content if isinstance(b, dict)]
        if "tool_use" in kinds and kinds[0] not in ("thinking", "redacted_thinking"):
            return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{kinds[0]}`. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block")
    return None


def _first_bad_tool_id(body: dict[str, Any]) -> str | None:
    """The path of the first tool_use id / tool_result tool_use_id Anthropic would refuse."""
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            value = block.get("id") if block.get("type") == "tool_use" else block.get("tool_use_id")
            if isinstance(value, str) and not re.fullmatch(r"[a-zA-Z0-9_-]+", value):
                return f"messages.{i}.content.{j}"
    return None


def _event(kind: str, **fields: Any) -> str:
    return sse({"type": kind, **fields}, kind)


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def overloaded_reply() -> Reply:
    return Reply(status=529, body=error_body("overloaded_error", "Overloaded"))


def overload_after_start_reply() -> Reply:
    """A stream that starts, pings, then fails before any content (a common overload)."""
    start = {"type": "message_start", "message": {"id": "msg_x", "type": "message", "role": "assistant",
             "model": MODEL_VERSION, "content": [], "stop_reason": None,
             "usage": {"input_tokens": 3, "output_tokens": 1}}}
    return Reply(events=[sse(start, "message_start"), sse({"type": "ping"}, "ping"), error_event()])


def error_event(kind: str = "overloaded_error", message: str = "Overloaded") -> str:
    return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")


@asynccontextmanager
async def make_anthropic_fake() -> AsyncIterator[AnthropicFake]:
    async with serve(AnthropicFake, "/v1") as fake:
        yield fake
