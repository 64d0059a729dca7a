"""A chat completion chunk stream as the Responses API event stream, in OpenAI's order:
response.created, response.in_progress, then per output item output_item.added,
(content_part.added, output_text.delta..., output_text.done, content_part.done |
function_call_arguments.delta..., function_call_arguments.done), output_item.done, and
last response.completed or response.incomplete (response.failed: `fail`).

Every event carries `type` (also its SSE event name) and a `sequence_number` that only
goes up; item ids are fixed when an item opens. Text events carry `logprobs: []` (the
official SDKs validate it). Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

from truckllm.protocols.responses.answer import (
    ResponseIds,
    call_item,
    failed,
    finished,
    message_item,
    obj,
    reasoning_item,
    shown,
    shown_items,
    text_part,
    usage_from_chat,
)
from truckllm.protocols.responses.request import ToolNames, custom_input


class ResponsesEventWriter:
    """Per-stream state: chat chunks in (decoded), Responses events out (dicts)."""

    def __init__(self, frame: dict[str, Any], ids: ResponseIds, names: ToolNames,
                 sealed: bool = False) -> None:
        self._frame = frame
        self._ids = ids
        self._names = names
        self._sealed = sealed                          # the client is shown encrypted_content
        self._state: dict[str, Any] | None = None      # the open reasoning item's provider state
        self._summary = False                          # the open reasoning item has a summary part
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []       # finished items
        self._open: dict[str, Any] | None = None      # the item being streamed
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}   # chat tool index -> its open item
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        # The finished response, reasoning state included whatever the client is shown.
        self.response: dict[str, Any] | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        return self._output

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._start() if not self._started else []
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_from_chat(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = obj(choice.get("delta"))
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                events += self._reasoning(reasoning)
            state = delta.get("reasoning_state")
            if isinstance(state, dict):
                events += self._reasoning_state(state)
            text = delta.get("content")
            if isinstance(text, str) and text:
                events += self._text_delta(text)
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events that end a stream that ended normally."""
        events = self._start() if not self._started else []
        events += self._close_open()
        self.response = finished(self._frame, self._output, self._finish_reason, self._usage)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        events.append(self._event(kind, response=shown(self.response, self._sealed)))
        return events

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """The event that ends a stream broken off after it started; `error` is an OpenAI
        error object. Items still open are left out of the response."""
        events = self._start() if not self._started else []
        self.response = failed(self._frame, self._output, error)
        events.append(self._event("response.failed", response=shown(self.response, self._sealed)))
        return events

    # ---- items ---------------------------------------------------------------------------

    def _start(self) -> list[dict[str, Any]]:
        self._started = True
        return [self._event("response.created", response=self._frame),
                self._event("response.in_progress", response=self._frame)]

    def _open_reasoning(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The open reasoning item, opened now if another item (or none) is open."""
        item = self._open
        if item is not None and item["type"] == "reasoning":
            return item, []
        events = self._close_open()
        item = self._open_item(reasoning_item(self._next_id("rs"), ""))
        self._state, self._summary = None, False
        events.append(self._added(item))
        return item, events

    def _reasoning_state(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """A piece of the provider's reasoning state: it joins the open reasoning item's."""
        _, events = self._open_reasoning()
        if self._state is None or self._state.get("provider") != state.get("provider"):
            self._state = {**state, "blocks": list(state.get("blocks") or [])}
        else:
            self._state["blocks"] = [*self._state["blocks"], *(state.get("blocks") or [])]
        return events

    def _reasoning(self, text: str) -> list[dict[str, Any]]:
        item, events = self._open_reasoning()
        if not self._summary:
            self._summary = True
            events.append(self._event("response.reasoning_summary_part.added", item_id=item["id"],
                                      output_index=len(self._output), summary_index=0,
                                      part={"type": "summary_text", "text": ""}))
        self._text.append(text)
        events.append(self._event("response.reasoning_summary_text.delta", item_id=item["id"],
                                  output_index=len(self._output), summary_index=0, delta=text))
        return events

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open
        if item is None or item["type"] != "message":
            events += self._close_open()
            item = self._open_item(message_item(self._next_id("msg"), [], "in_progress"))
            events.append(self._added(item))
            events.append(self._event("response.content_part.added", item_id=item["id"],
                                      output_index=len(self._output), content_index=0,
                                      part=text_part("")))
        self._text.append(text)
        events.append(self._event("response.output_text.delta", item_id=item["id"],
                                  output_index=len(self._output), content_index=0, delta=text,
                                  logprobs=[]))
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        function = obj(call.get("function"))
        item = self._calls.get(index)
        if item is None:
            events += self._close_open()
            item = self._open_item(call_item(
                self._ids, len(self._output), str(call.get("id") or ""),
                str(function.get("name") or ""), "", self._names, "in_progress"))
            self._calls[index] = item
            events.append(self._added(item))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and item is self._open:
            self._text.append(arguments)
            if item["type"] == "function_call":     # a custom tool's input is sent when whole
                events.append(self._event("response.function_call_arguments.delta",
                                          item_id=item["id"], output_index=len(self._output),
                                          delta=arguments))
        return events

    def _open_item(self, item: dict[str, Any]) -> dict[str, Any]:
        self._open = item
        self._text = []
        return item

    def _next_id(self, prefix: str) -> str:
        return self._ids.item(prefix, len(self._output))

    def _added(self, item: dict[str, Any]) -> dict[str, Any]:
        return self._event("response.output_item.added", output_index=len(self._output), item=item)

    def _close_open(self) -> list[dict[str, Any]]:
        """Done events for the item being streamed, which joins the output."""
        item = self._open
        if item is None:
            return []
        self._open = None
        text = "".join(self._text)
        index = len(self._output)
        events: list[dict[str, Any]] = []
        if item["type"] == "message":
            part = text_part(text)
            events.append(self._event("response.output_text.done", item_id=item["id"],
                                      output_index=index, content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"],
                                      output_index=index, content_index=0, part=part))
            done = {**item, "status": "completed", "content": [part]}
        elif item["type"] == "function_call":
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, arguments=text))
            done = {**item, "status": "completed", "arguments": text}
        elif item["type"] == "custom_tool_call":
            # The chat call's arguments wrap the input in JSON: it is known when they end.
            value = custom_input(text) if text else ""
            if value:
                events.append(self._event("response.custom_tool_call_input.delta",
                                          item_id=item["id"], output_index=index, delta=value))
            events.append(self._event("response.custom_tool_call_input.done", item_id=item["id"],
                                      output_index=index, input=value))
            done = {**item, "input": value}
        else:
            done = reasoning_item(item["id"], text, self._state)
            if self._summary:
                summary = {"type": "summary_text", "text": text}
                events.append(self._event("response.reasoning_summary_text.done", item_id=item["id"],
                                          output_index=index, summary_index=0, text=text))
                events.append(self._event("response.reasoning_summary_part.done", item_id=item["id"],
                                          output_index=index, summary_index=0, part=summary))
        events.append(self._event("response.output_item.done", output_index=index,
                                  item=shown_items([done], self._sealed)[0]))
        self._output.append(done)
        return events

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event
