"""Long tool-call ids shortened for OpenAI-compatible upstreams, consistently, and only
when a history has them."""

from __future__ import annotations

import orjson

from truckllm.providers.shared.tool_ids import OPENAI_MAX_ID, short_id, with_short_tool_ids

LONG = "call_r_0__ts_" + "x" * 200


def history(call_id: str) -> dict[str, object]:
    return {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": call_id, "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}},
                                             {"id": "call_short", "type": "function",
                                              "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "one"},
        {"role": "tool", "tool_call_id": "call_short", "content": "two"},
    ]}


def test_long_ids_become_one_short_id_in_calls_and_results() -> None:
    payload = history(LONG)
    sent = orjson.loads(with_short_tool_ids(payload, orjson.dumps(payload)))["messages"]
    new_id = sent[1]["tool_calls"][0]["id"]
    assert new_id == sent[2]["tool_call_id"] == short_id(LONG) and len(new_id) <= OPENAI_MAX_ID
    assert short_id(LONG) != short_id(LONG + "y")
    assert sent[1]["tool_calls"][1]["id"] == sent[3]["tool_call_id"] == "call_short"
    assert payload == history(LONG)                      # the client's body is not changed


def test_bodies_without_long_ids_go_as_serialised() -> None:
    for payload in (history("call_short_enough"), {"model": "m", "messages": [{"role": "user", "content": "x"}]}):
        serialised = orjson.dumps(payload)
        assert with_short_tool_ids(payload, serialised) is serialised
