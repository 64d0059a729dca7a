"""The OpenAI Responses API as the fakes speak it (`POST /responses`), in the real wire
format: the `response` object and the named SSE event stream (`event:` + `data:` with
`type` and `sequence_number`, OpenAI's order, `response.completed` last).

Deterministic answers, scripted by the request as the other fakes do: the output of a
`function_call_output` as the last input item is answered "Tool said: <output>"; a
request with function tools whose last user text asks for the weather gets a
`get_weather` call (first tool's name); one whose last user text asks to run a command and
that offers a shell-like function tool (`shell`, `exec_command`, `local_shell`) gets a call
running `echo hello`; anything else is answered "Fake reply to: <text>". Imports nothing
from truckllm: it stands for the outside world.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

CREATED = 1_700_000_000
SHELL_TOOLS = ("shell", "exec_command", "local_shell", "container.exec")


def last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
    return ""


class ResponsesAnswer:
    def __init__(self, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self.body = body
        digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        self.id = f"resp_{digest[:32]}"
        self.text, self.calls = self._decide(body)
        items = body.get("input")
        self.input_tokens = max(len(str(items).split()), 1)

    @staticmethod
    def _decide(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        items = body.get("input")
        last = items[-1] if isinstance(items, list) and items else {}
        if isinstance(last, dict) and last.get("type") == "function_call_output":
            output = last.get("output")
            text = output if isinstance(output, str) else " ".join(
                str(p.get("text", "")) for p in output or [] if isinstance(p, dict))
            return f"Tool said: {text}", []
        functions = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        asked = last_user_text(items).lower()
        shell = next((t for t in functions if t.get("name") in SHELL_TOOLS), None)
        if shell is not None and ("run" in asked or "echo" in asked):
            arguments: dict[str, Any] = ({"cmd": "echo hello"} if shell["name"] == "exec_command"
                                         else {"command": ["echo", "hello"]})
            return "", [{"name": shell["name"], "arguments": arguments}]
        if functions and "weather" in asked:
            return "Let me check.", [{"name": functions[0]["name"], "arguments": {"city": "Paris"}}]
        return f"Fake reply to: {last_user_text(items)}".strip(), []

    def _output(self) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = []
        if self.text:
            output.append({"id": f"msg_{self.id[5:]}", "type": "message", "status": "completed",
                           "role": "assistant", "content": [
                               {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}]})
        for i, call in enumerate(self.calls):
            output.append({"id": f"fc_{self.id[5:]}{i}", "type": "function_call", "status": "completed",
                           "call_id": f"call_{self.id[5:17]}{i}", "name": call["name"],
                           "arguments": orjson.dumps(call["arguments"]).decode()})
        return output

    def response(self, status: str = "completed", output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        output_tokens = len(self.text.split()) + 5 * len(self.calls)
        done = status != "in_progress"
        return {
            "id": self.id, "object": "response", "created_at": CREATED, "status": status,
            "background": False, "error": None, "incomplete_details": None,
            "instructions": self.body.get("instructions"), "max_output_tokens": self.body.get("max_output_tokens"),
            "model": self.model, "output": (self._output() if output is None else output) if done else [],
            "parallel_tool_calls": True, "previous_response_id": self.body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": self.body.get("store", True), "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": self.body.get("tool_choice", "auto"), "tools": self.body.get("tools") or [],
            "top_p": 1.0, "truncation": "disabled",
            "usage": {"input_tokens": self.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": self.input_tokens + output_tokens} if done else None,
            "user": None, "metadata": self.body.get("metadata") or {},
        }

    def events(self) -> list[str]:
        """The SSE stream, framed: `event: <type>` and `data: <json>` per event."""
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self.response("in_progress")},
            {"type": "response.in_progress", "response": self.response("in_progress")}]
        for index, item in enumerate(self._output()):
            if item["type"] == "message":
                events += _message_events(index, item)
            else:
                events += _call_events(index, item)
        # Codex reads these, and a gateway must not forward them (not in the API).
        events.append({"type": "codex.rate_limits", "rate_limits": {"primary": None}})
        events.append({"type": "response.completed", "response": self.response()})
        framed = []
        number = 0
        for event in events:
            if event["type"].startswith("response."):
                event = {"type": event["type"], "sequence_number": number,
                         **{k: v for k, v in event.items() if k != "type"}}
                number += 1
            framed.append(f"event: {event['type']}\ndata: {orjson.dumps(event).decode()}\n\n")
        return framed


def _message_events(index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    text = item["content"][0]["text"]
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    common = {"item_id": item["id"], "output_index": index, "content_index": 0}
    words = text.split(" ")
    deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return [
        {"type": "response.output_item.added", "output_index": index,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **common, "part": part},
        *({"type": "response.output_text.delta", **common, "delta": d, "logprobs": []} for d in deltas),
        {"type": "response.output_text.done", **common, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **common, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]


def _call_events(index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    arguments = item["arguments"]
    common = {"item_id": item["id"], "output_index": index}
    return [
        {"type": "response.output_item.added", "output_index": index,
         "item": {**item, "status": "in_progress", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", **common, "delta": arguments[:5]},
        {"type": "response.function_call_arguments.delta", **common, "delta": arguments[5:]},
        {"type": "response.function_call_arguments.done", **common, "arguments": arguments},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]
