"""The Responses API `response` object: its frame (what the request asked for, echoed as
the OpenAI API does), a chat completion's answer as output items, and chat usage as
Responses usage.

Reasoning the provider showed becomes a `reasoning` item (its text as the summary) that
carries the provider's reasoning state, sealed (protocols.responses.sealed), as its
`encrypted_content`: the response store keeps it for a `previous_response_id` follow-up,
and the client is shown it only when it asked (`include: ["reasoning.encrypted_content"]`),
to send back itself on a stateless next turn.

Pure, no I/O. Imports only protocols.responses.request and .sealed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from truckllm.protocols.responses.request import ToolNames, custom_input
from truckllm.protocols.responses.sealed import seal

ENCRYPTED_REASONING = "reasoning.encrypted_content"

# chat finish_reason -> incomplete_details.reason; any other finish is `completed`.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_response_id() -> str:
    """The id of a response made here. A store id must not be guessable: from the OS's
    random source, as `secrets.token_hex` takes it."""
    return "resp_" + os.urandom(24).hex()


@dataclass(frozen=True, slots=True)
class ResponseIds:
    """The ids of one response and of the output items made for it: stable for its life,
    so a stream's events and its final object agree."""

    response_id: str             # resp_<hex>

    def item(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.response_id.removeprefix('resp_')}{index:02d}"


def response_frame(body: dict[str, Any], ids: ResponseIds, created_at: int, alias: str) -> dict[str, Any]:
    """A response object with no output yet (`in_progress`), the request's settings echoed."""
    text = obj(body.get("text"))
    reasoning = obj(body.get("reasoning"))
    return {
        "id": ids.response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": alias,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def finished(frame: dict[str, Any], output: list[dict[str, Any]], finish_reason: str | None,
             usage: dict[str, Any] | None) -> dict[str, Any]:
    """The frame as a finished response: `completed`, or `incomplete` with the reason."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    return {**frame, "status": "incomplete" if reason else "completed",
            "incomplete_details": {"reason": reason} if reason else None,
            "output": output, "usage": usage}


def failed(frame: dict[str, Any], output: list[dict[str, Any]], error: dict[str, Any]) -> dict[str, Any]:
    """The frame as a failed response; `error` is an OpenAI error object (code, message)."""
    return {**frame, "status": "failed", "output": output,
            "error": {"code": error.get("code") or error.get("type") or "server_error",
                      "message": str(error.get("message") or "upstream error")}}


def wants_sealed_reasoning(body: dict[str, Any]) -> bool:
    """Whether the request asked for reasoning items' `encrypted_content`."""
    include = body.get("include")
    return isinstance(include, list) and ENCRYPTED_REASONING in include


def shown(response: dict[str, Any], sealed: bool) -> dict[str, Any]:
    """A response as its client sees it: without its reasoning items' `encrypted_content`
    unless the client asked for it (`sealed`)."""
    output = response.get("output")
    if sealed or not isinstance(output, list):
        return response
    return {**response, "output": shown_items(output, sealed)}


def shown_items(items: list[Any], sealed: bool) -> list[Any]:
    """Items as a client sees them: reasoning items without `encrypted_content` unless
    the client asked for it (`sealed`)."""
    if sealed or not any(isinstance(i, dict) and "encrypted_content" in i for i in items):
        return items
    return [{k: v for k, v in item.items() if k != "encrypted_content"}
            if isinstance(item, dict) and item.get("type") == "reasoning" else item for item in items]


def from_chat_response(chat: dict[str, Any], frame: dict[str, Any], ids: ResponseIds,
                       names: ToolNames) -> dict[str, Any]:
    """A chat completion (first choice) as the finished response object, the reasoning
    item carrying the provider's reasoning state as `encrypted_content` (see `shown`)."""
    choices = chat.get("choices")
    choice = obj(choices[0]) if isinstance(choices, list) and choices else {}
    message = obj(choice.get("message"))
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    text = reasoning if isinstance(reasoning, str) else ""
    state = message.get("reasoning_state")
    if text or isinstance(state, dict):
        output.append(reasoning_item(ids.item("rs", 0), text,
                                     state if isinstance(state, dict) else None))
    content = message.get("content")
    refusal = message.get("refusal")
    if (isinstance(content, str) and content) or (isinstance(refusal, str) and refusal):
        part = (text_part(content) if isinstance(content, str) and content
                else {"type": "refusal", "refusal": refusal})
        output.append(message_item(ids.item("msg", len(output)), [part], "completed"))
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = obj(call.get("function"))
        output.append(call_item(ids, len(output), str(call.get("id")), str(function.get("name")),
                                str(function.get("arguments") or ""), names, "completed"))
    return finished(frame, output, choice.get("finish_reason"), usage_from_chat(chat.get("usage")))


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}


def call_item(ids: ResponseIds, index: int, call_id: str, chat_name: str, arguments: str,
              names: ToolNames, status: str) -> dict[str, Any]:
    """A chat tool call as a function_call item, or a custom_tool_call for a custom tool."""
    if chat_name in names.custom:
        return {"id": ids.item("ctc", index), "type": "custom_tool_call", "call_id": call_id,
                "input": custom_input(arguments) if arguments else "", **names.item_fields(chat_name)}
    return {"id": ids.item("fc", index), "type": "function_call", "status": status,
            "arguments": arguments, "call_id": call_id, **names.item_fields(chat_name)}


def reasoning_item(item_id: str, text: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reasoning item; with the provider's reasoning `state`, sealed as its `encrypted_content`."""
    item: dict[str, Any] = {"id": item_id, "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if state is not None:
        item["encrypted_content"] = seal(state)
    return item


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """Chat usage in Responses terms, cached and reasoning tokens included."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (_count(completion_details.get("reasoning_tokens"))
                 if isinstance(completion_details, dict) else 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (upstream shapes are not trusted)."""
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
