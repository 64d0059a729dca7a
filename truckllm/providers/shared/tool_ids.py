"""Tool-call ids in a chat history sent to an OpenAI-compatible upstream. Pure, no I/O.

OpenAI refuses a history whose tool-call ids are longer than 40 characters
(`string_above_max_length`). Ids that long reach it when a conversation moves between
providers: Gemini's ids carry a thought signature (truckllm.providers.gemini invents
`call_<response>_<k>__ts_<signature>`), and other APIs have their own long ids. Such ids
are replaced by a short digest of themselves; the same id always gives the same short id,
so a tool call and its result still match. (Anthropic's id rule has its own stand-ins,
made by the same `stand_in`.)
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

OPENAI_MAX_ID = 40
_TOOL_RESULT_KEY = b'"tool_call_id"'


def stand_in(prefix: str, call_id: str, hex_digits: int) -> str:
    """A stable replacement for an id an upstream would refuse: the same id always gives
    the same stand-in, so a tool call and its result still match."""
    return prefix + hashlib.sha256(call_id.encode("utf-8", "surrogateescape")).hexdigest()[:hex_digits]


def short_id(call_id: str) -> str:
    """`call_` and 32 hex digits of the id's SHA-256 when it is too long; else as it is."""
    return call_id if len(call_id) <= OPENAI_MAX_ID else stand_in("call_", call_id, 32)


def with_short_tool_ids(payload: dict[str, Any], serialised: bytes) -> bytes:
    """The serialised payload again with long tool-call ids shortened, or `serialised`
    itself when nothing needs it. Only a history with a tool result can hold an id, so
    every other request is looked at no further than one substring search."""
    # `find`, not `in`: bytes' `in` first tries its operand as an integer (a byte value)
    # and drops the TypeError, which costs more than the search itself.
    if serialised.find(_TOOL_RESULT_KEY) < 0:
        return serialised
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return serialised
    fitted = [_fit_message(message) for message in messages]
    if all(new is old for new, old in zip(fitted, messages, strict=True)):
        return serialised
    return orjson.dumps({**payload, "messages": fitted})


def _fit_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    result_id = message.get("tool_call_id")
    if isinstance(result_id, str) and len(result_id) > OPENAI_MAX_ID:
        message = {**message, "tool_call_id": short_id(result_id)}
    calls = message.get("tool_calls")
    if isinstance(calls, list) and any(_too_long(call) for call in calls):
        message = {**message, "tool_calls": [
            {**call, "id": short_id(call["id"])} if _too_long(call) else call for call in calls]}
    return message


def _too_long(call: Any) -> bool:
    return isinstance(call, dict) and isinstance(call.get("id"), str) and len(call["id"]) > OPENAI_MAX_ID
