"""The pure Anthropic-Messages-inbound translation, both directions, with the expected
shapes written out (the end-to-end tests drive the same code with the anthropic SDK)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from truckllm.errors import InvalidRequest
from truckllm.protocols.anthropic_messages import (
    AnthropicEventWriter,
    anthropic_error,
    dropped_tools,
    from_chat_response,
    to_chat_request,
)


def test_request_with_system_images_tools_and_results() -> None:
    request = {
        "model": "any", "max_tokens": 300, "system": [{"type": "text", "text": "Be terse."}],
        "temperature": 0.5, "top_p": 0.9, "top_k": 3, "stop_sequences": ["END"], "stream": True,
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "Thanks"}]},
        ],
    }
    assert to_chat_request(request) == {
        "model": "any", "max_tokens": 300, "temperature": 0.5, "top_p": 0.9, "stop": ["END"],
        "user": "u-1", "stream": True, "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"},
                                                    "description": "Weather"}}],
        "tool_choice": "required", "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "Thanks"},
        ],
    }


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    chat = to_chat_request({"model": "m", "max_tokens": 1, "tool_choice": choice,
                            "messages": [{"role": "user", "content": "x"}]})
    assert chat["tool_choice"] == expected and "parallel_tool_calls" not in chat


@pytest.mark.parametrize("request_body", [
    {"messages": []},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "server_tool_use", "id": "x"}]}]},
    {"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": -1}},
    {"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": "lots"}},
])
def test_untranslatable_requests_are_400(request_body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        to_chat_request({"model": "m", "max_tokens": 1, **request_body})


def test_server_tools_are_left_out_and_named() -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                      {"name": "f", "input_schema": {"type": "object"}},
                      {"type": "custom", "name": "g", "input_schema": {"type": "object"}}]}
    chat = to_chat_request(body)
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["f", "g"]
    assert dropped_tools(body) == ("web_search_20250305",)
    assert dropped_tools({"tools": "nope"}) == ()


def test_a_system_message_mid_conversation_stays_in_place() -> None:
    chat = to_chat_request({"model": "m", "max_tokens": 1, "system": [{"type": "text", "text": "S"}], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "Now in French."},
        {"role": "user", "content": "again"}]})
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [
        ("system", "S"), ("user", "hi"), ("system", "Be brief."), ("assistant", "ok"),
        ("system", "Now in French."), ("user", "again")]


@pytest.mark.parametrize(("fields", "effort"), [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 8000}}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 32000}}, "high"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "output_config": {"effort": "max"}}, "high"),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}, None),
    ({"output_config": {"effort": "low"}}, None),
    ({"thinking": {"type": "disabled"}}, None),
])
def test_thinking_becomes_reasoning_effort_only_when_turned_on(fields: dict[str, Any], effort: str | None) -> None:
    chat = to_chat_request({"model": "m", "max_tokens": 40000, "messages": [{"role": "user", "content": "x"}],
                            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                            **fields})
    assert chat.get("reasoning_effort") == effort
    assert not {"thinking", "output_config", "context_management"} & set(chat)


def test_a_long_user_id_reaches_chat_as_its_digest() -> None:
    long_id = '{"device_id":"' + "d" * 64 + '","session_id":"s1"}'
    chats = [to_chat_request({"model": "m", "max_tokens": 1, "metadata": {"user_id": user},
                              "messages": [{"role": "user", "content": "x"}]}) for user in ("u-1", long_id)]
    assert chats[0]["user"] == "u-1"
    assert len(chats[1]["user"]) == 64 and chats[1]["user"] != long_id[:64]


def test_a_long_tool_description_is_cut_and_given_whole_in_a_system_message() -> None:
    long = "Runs a command. " + "Mind the quoting. " * 100
    chat = to_chat_request({"model": "m", "max_tokens": 1, "system": "S", "messages": [{"role": "user", "content": "x"}],
                            "tools": [{"name": "Bash", "description": long, "input_schema": {"type": "object"}},
                                      {"name": "Read", "description": "Reads a file.", "input_schema": {"type": "object"}}]})
    bash, read = (tool["function"] for tool in chat["tools"])
    assert len(bash["description"]) == 1024 and bash["description"].startswith("Runs a command.")
    assert read["description"] == "Reads a file."
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user"]
    assert "## Tool Bash\n\n" + long in chat["messages"][1]["content"] and "Reads a file" not in chat["messages"][1]["content"]


def test_response_with_text_tool_calls_and_cache_usage() -> None:
    chat = {"id": "chatcmpl-abc", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}}],
            "usage": {"prompt_tokens": 1210, "completion_tokens": 7, "total_tokens": 1217,
                      "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 200}}}
    assert from_chat_response(chat, "alias") == {
        "id": "msg_abc", "type": "message", "role": "assistant", "model": "alias",
        "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "call_2", "name": "g", "input": {"_raw": "not json"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 7, "cache_creation_input_tokens": 200,
                  "cache_read_input_tokens": 1000},
    }


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), ("function_call", "tool_use")])
def test_finish_reasons(finish: str, stop_reason: str) -> None:
    chat = {"id": "x", "choices": [{"finish_reason": finish, "message": {"content": "a"}}]}
    assert from_chat_response(chat, "m")["stop_reason"] == stop_reason


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "chatcmpl-s1", "object": "chat.completion.chunk",
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


def test_stream_events_text_then_tool_calls() -> None:
    writer = AnthropicEventWriter("alias")
    chunks = [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Let me"}), chunk({"content": " check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
    ]
    emitted = [e for c in chunks for e in writer.feed(c)] + writer.finish()
    assert all(e.event == orjson.loads(e.data)["type"] for e in emitted), "named by their type"
    events = [orjson.loads(e.data) for e in emitted]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("message_delta", None), ("message_stop", None)]
    assert events[0]["message"]["id"] == "msg_s1" and events[0]["message"]["model"] == "alias"
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
    assert "".join(e["delta"]["partial_json"] for e in events[6:8]) == '{"a": 1}'
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"]["input_tokens"] == 9 and events[-2]["usage"]["output_tokens"] == 4


def test_empty_stream_still_has_the_envelope() -> None:
    events = [orjson.loads(e.data)["type"] for e in AnthropicEventWriter("m").finish()]
    assert events == ["message_start", "message_delta", "message_stop"]


@pytest.mark.parametrize(("status", "openai_type", "anthropic_type"), [
    (404, "not_found_error", "not_found_error"), (429, "rate_limit_error", "rate_limit_error"),
    (503, "overloaded_error", "overloaded_error"), (502, "upstream_error", "api_error"),
    (413, "invalid_request_error", "invalid_request_error"), (None, "timeout_error", "timeout_error"),
])
def test_errors(status: int | None, openai_type: str, anthropic_type: str) -> None:
    body = {"error": {"message": "boom", "type": openai_type, "param": None, "code": None}}
    assert anthropic_error(status, body) == {"type": "error", "error": {"type": anthropic_type, "message": "boom"}}
