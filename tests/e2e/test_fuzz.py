"""Property-based fuzz of the client API: bodies near the real shapes (and far from them)
for /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages (and its token
counting) and /v1/responses, streamed and not, by a key
with a tpm limit and one without. Whatever is sent, the answer is never a 5xx, never a
hang, and an error is always JSON. Bounded in examples (and derandomised), so it runs
in a few seconds in `make test`; TRUCKLLM_FUZZ_EXAMPLES=2000 runs a longer, random one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import CLIENT_KEY, Gateway, Stack, make_config, make_gateway

pytestmark = pytest.mark.asyncio
TPM_KEY = "tk-fuzz-with-tpm-limit"
EXAMPLES = int(os.environ.get("TRUCKLLM_FUZZ_EXAMPLES", "100"))

json_leaf = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` three times in four: near-valid bodies get past the first checks."""
    return st.one_of(usual, usual, usual, other)


json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "d",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string"}}}}}
CHAT_BODIES = [
    {"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "demo", "stream": True, "stream_options": {"include_usage": True},
     "messages": [{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                               {"type": "image_url", "image_url": {"url": PNG}}]}]},
    {"model": "demo", "tools": [TOOL], "tool_choice": "auto", "max_tokens": 50, "n": 1,
     "messages": [{"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
]
MESSAGES_BODIES = [
    {"model": "demo", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
    {"model": "demo", "max_tokens": 50, "stream": True,
     "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
     "thinking": {"type": "enabled", "budget_tokens": 1024},
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": "what is this"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                      "data": PNG.split(",")[1]}}]}]},
    {"model": "demo", "max_tokens": 50, "tools": [{"name": "t", "input_schema": {"type": "object"}}],
     "messages": [{"role": "user", "content": "use t"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "t",
                                                     "input": {}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1",
                                                "content": "done"}]}]},
]
EMBEDDINGS_BODIES = [
    {"model": "demo", "input": "a truck"},
    {"model": "demo", "input": ["a truck", "a road"], "encoding_format": "base64", "dimensions": 8},
    {"model": "demo", "input": [[1, 2, 3], [4]], "encoding_format": "float"},
]
RESPONSES_BODIES = [
    {"model": "demo", "input": "hi"},
    {"model": "demo", "stream": True, "instructions": "be brief", "store": False,
     "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low", "summary": "auto"},
     "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "x"}]},
               {"type": "message", "role": "user", "content": [
                   {"type": "input_text", "text": "what is this"},
                   {"type": "input_image", "image_url": PNG}]}]},
    {"model": "demo", "tool_choice": "auto", "max_output_tokens": 50,
     "text": {"format": {"type": "json_object"}},
     "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
               {"type": "namespace", "name": "ns", "tools": [
                   {"type": "function", "name": "inner", "parameters": {"type": "object"}}]},
               {"type": "web_search", "external_web_access": False}],
     "input": [{"type": "message", "role": "user", "content": "weather?"},
               {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
               {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]},
]
COMPLETIONS_BODIES = [
    {"model": "demo", "prompt": "once upon a time", "max_tokens": 20},
    {"model": "demo", "prompt": ["a", "b"], "stream": True, "stop": ["\n"], "echo": False},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found += _paths(item, (*prefix, key))
    return found


def _replaced(body: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[path[0]] = _replaced(body[path[0]], path[1:], new)
    return copy


def mutations(body: Any) -> st.SearchStrategy[Any]:
    """`body` with one value somewhere inside (or a key of an object) replaced by any JSON."""
    inner = _paths(body)[1:]
    return st.tuples(st.sampled_from(inner), json_value).map(lambda pair: _replaced(body, *pair))


def mutated(bodies: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A real request with one or two of its values replaced by anything JSON can hold."""
    once = st.sampled_from(bodies).flatmap(mutations)
    return mostly(once, once.flatmap(mutations))


anything = json_value


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    config = make_config(server={"log_level": "error"})
    config["keys"].append({"id": "metered", "key": TPM_KEY, "tpm": 10**9, "rpm": 10**9})
    async with make_gateway(config) as running:
        yield running


async def assert_answered(gateway: Gateway | Stack, path: str, body: Any, key: str,
                          upstream_may_refuse: bool = False) -> None:
    """No 5xx (but the 502 or 503 of a fake upstream's own refusal of a body it cannot
    read, when `upstream_may_refuse`), no hang, and JSON errors."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        response = await http.post(gateway.root + path, data=orjson.dumps(body),
                                   headers={"Authorization": f"Bearer {key}",
                                            "Content-Type": "application/json"})
        raw = await response.read()
    # A fake upstream refusing what it cannot read (and its breaker opening after a few
    # such refusals) is the upstream's answer, passed on; a 500 is always the gateway's.
    relayed = upstream_may_refuse and response.status in (502, 503) and b"Internal error" not in raw
    assert response.status < 500 or relayed, (response.status, raw[:500])
    content_type = response.headers["Content-Type"]
    if response.status >= 400:
        assert content_type.startswith("application/json"), raw[:200]
        orjson.loads(raw)
    elif content_type.startswith("text/event-stream"):
        ended = (b"[DONE]", b"message_stop", b"response.completed", b"response.incomplete",
                 b"response.failed")
        assert any(end in raw[-2000:] for end in ended), raw[-300:]
    else:
        orjson.loads(raw)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="TRUCKLLM_FUZZ_EXAMPLES" not in os.environ, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(body=mostly(mutated(CHAT_BODIES), anything), metered=st.booleans())
async def test_chat_completions_never_fail_inside(gateway: Gateway, body: Any, metered: bool) -> None:
    await assert_answered(gateway, "/v1/chat/completions", body, TPM_KEY if metered else CLIENT_KEY)


@FUZZ
@given(body=mostly(mutated(MESSAGES_BODIES), anything), metered=st.booleans())
async def test_messages_never_fail_inside(gateway: Gateway, body: Any, metered: bool) -> None:
    await assert_answered(gateway, "/v1/messages", body, TPM_KEY if metered else CLIENT_KEY)


@FUZZ
@given(body=mostly(mutated(EMBEDDINGS_BODIES), anything), metered=st.booleans())
async def test_embeddings_never_fail_inside(gateway: Gateway, body: Any, metered: bool) -> None:
    await assert_answered(gateway, "/v1/embeddings", body, TPM_KEY if metered else CLIENT_KEY)


@FUZZ
@given(body=mostly(mutated(RESPONSES_BODIES), anything), metered=st.booleans())
async def test_responses_never_fail_inside(gateway: Gateway, body: Any, metered: bool) -> None:
    await assert_answered(gateway, "/v1/responses", body, TPM_KEY if metered else CLIENT_KEY)


@FUZZ
@given(body=mostly(mutated(COMPLETIONS_BODIES), anything), metered=st.booleans())
async def test_completions_never_fail_inside(gateway: Gateway, body: Any, metered: bool) -> None:
    await assert_answered(gateway, "/v1/completions", body, TPM_KEY if metered else CLIENT_KEY)


@FUZZ
@given(body=mostly(mutated(MESSAGES_BODIES), anything))
async def test_count_tokens_never_fails_inside(gateway: Gateway, body: Any) -> None:
    await assert_answered(gateway, "/v1/messages/count_tokens", body, CLIENT_KEY)


TRANSLATED = ["claude", "gem", "az"]


@FUZZ
@given(body=mutated(CHAT_BODIES), alias=st.sampled_from(TRANSLATED))
async def test_translated_chat_never_fails_inside(stack: Stack, body: Any, alias: str) -> None:
    """Through the Anthropic, Gemini and Azure translations, to their fake upstreams."""
    if isinstance(body, dict) and body.get("model") == "demo":
        body = {**body, "model": alias}
    await assert_answered(stack, "/v1/chat/completions", body, CLIENT_KEY,
                          upstream_may_refuse=True)


@FUZZ
@given(body=mutated(MESSAGES_BODIES), alias=st.sampled_from(TRANSLATED))
async def test_translated_messages_never_fail_inside(stack: Stack, body: Any, alias: str) -> None:
    if isinstance(body, dict) and body.get("model") == "demo":
        body = {**body, "model": alias}
    await assert_answered(stack, "/v1/messages", body, CLIENT_KEY, upstream_may_refuse=True)


@FUZZ
@given(body=mutated(RESPONSES_BODIES), alias=st.sampled_from(TRANSLATED))
async def test_translated_responses_never_fail_inside(stack: Stack, body: Any, alias: str) -> None:
    """Through chat to Anthropic and Gemini; natively to Azure's /responses."""
    if isinstance(body, dict) and body.get("model") == "demo":
        body = {**body, "model": alias}
    await assert_answered(stack, "/v1/responses", body, CLIENT_KEY, upstream_may_refuse=True)
