"""The prompt-token estimate and the cost breakdown: pure functions, exact numbers."""

from __future__ import annotations

import math

import pytest

from truckllm.config.schema import PricingConfig
from truckllm.limits import cost_of, estimate_prompt_tokens
from truckllm.limits.estimate import MEDIA_PART_TOKENS, stream_usage, streamed_text_chars
from truckllm.usage import Usage


def test_chat_estimate_is_characters_over_four_rounded_up() -> None:
    body = {"model": "gpt-4o", "max_tokens": 999,
            "messages": [{"role": "user", "content": "x" * 400}]}
    # keys "role", "content" (11 chars) + "user" (4) + 400 characters of text
    assert estimate_prompt_tokens(body) == math.ceil((11 + 4 + 400) / 4)


def test_only_prompt_fields_count() -> None:
    assert estimate_prompt_tokens({"model": "m" * 1000, "temperature": 0.5, "user": "u" * 800}) == 0
    assert estimate_prompt_tokens({"prompt": "abcd" * 25}) == 25
    assert estimate_prompt_tokens({"input": ["abcd", "efgh"]}) == 2


def test_images_count_flat_not_by_their_base64() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    body = {"messages": [{"role": "user", "content": [image, image]}]}
    assert estimate_prompt_tokens(body) == 2 * MEDIA_PART_TOKENS + math.ceil((11 + 4) / 4)


def test_token_id_inputs_count_one_per_id() -> None:
    assert estimate_prompt_tokens({"input": [1, 2, 3, 4, 5]}) == 5
    assert estimate_prompt_tokens({"prompt": [[1, 2], [3, 4, 5]]}) == 5


def test_tools_and_system_count_and_junk_is_zero() -> None:
    with_tools = {"messages": [], "tools": [{"type": "function", "function": {"name": "f" * 40}}]}
    assert estimate_prompt_tokens(with_tools) > 10
    assert estimate_prompt_tokens({"system": "s" * 40, "messages": []}) == 10
    assert estimate_prompt_tokens([1, 2]) == 0
    assert estimate_prompt_tokens(None) == 0


PRICES = PricingConfig(input_per_mtok=2.5, output_per_mtok=10.0, cache_read_per_mtok=1.25)


def test_a_schema_property_named_type_is_counted_as_text() -> None:
    # Codex CLI's tools have such properties: {"type": {"type": "string"}}.
    tools = [{"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"type": {"type": "string"}}}}]
    assert estimate_prompt_tokens({"input": "hi", "tools": tools}) > 0


def test_cost_prices_each_kind_of_token_at_its_rate() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=200_000,
                  cache_read_tokens=400_000, cache_write_tokens=100_000)
    breakdown = cost_of(usage, PRICES)
    lines = {line["kind"]: (line["tokens"], line["usd_per_mtok"], round(line["usd"], 9))
             for line in breakdown.lines}
    assert lines == {
        "input": (500_000, 2.5, 1.25),
        "cache_read": (400_000, 1.25, 0.5),
        "cache_write": (100_000, 2.5, 0.25),    # no cache-write price: the input price
        "output": (200_000, 10.0, 2.0),
    }
    assert breakdown.total_usd == pytest.approx(4.0)
    logged = breakdown.as_log()
    assert logged["cost_usd"] == pytest.approx(4.0)
    assert logged["cost_lines"][0] == {"kind": "input", "tokens": 500_000,
                                       "usd_per_mtok": 2.5, "usd": pytest.approx(1.25)}
    # The logged keys, in this order, are what access lines and the admin API show.
    assert [list(line) for line in logged["cost_lines"]] == \
        [["kind", "tokens", "usd_per_mtok", "usd"]] * 4


def test_cost_is_zero_without_pricing_or_usage_and_skips_empty_kinds() -> None:
    assert cost_of(Usage(prompt_tokens=10), None).total_usd == 0.0
    assert cost_of(None, PRICES).lines == ()
    small = cost_of(Usage(prompt_tokens=1000, completion_tokens=10), PRICES)
    assert [line["kind"] for line in small.lines] == ["input", "output"]
    assert small.total_usd == pytest.approx(1000 * 2.5e-6 + 10 * 10e-6)


def test_inconsistent_cache_counts_never_price_more_tokens_than_the_prompt() -> None:
    breakdown = cost_of(Usage(prompt_tokens=100, cache_read_tokens=150), PRICES)
    assert sum(line["tokens"] for line in breakdown.lines) == 100


def test_streamed_text_counts_generated_output_of_openai_and_anthropic_payloads() -> None:
    chat = b'{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"hello"}}]}'
    tool = (b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
            b'"type":"function","function":{"name":"f","arguments":"{}"}}]}}]}')
    legacy = b'{"choices":[{"index":0,"text":"abc","finish_reason":null}]}'
    anthropic = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hey"}}'
    assert [streamed_text_chars(p) for p in (chat, tool, legacy, anthropic)] == [5, 3, 3, 3]
    assert streamed_text_chars(b"not json") == streamed_text_chars(b"[1]") == 0


def test_stream_usage_is_exact_when_complete_and_estimated_when_cut() -> None:
    reported = Usage(prompt_tokens=10, completion_tokens=3)
    assert stream_usage(reported, complete=True, prompt_estimate=7, text_chars=99) == (reported, False)
    assert stream_usage(None, complete=True, prompt_estimate=7, text_chars=9) == (
        Usage(prompt_tokens=7, completion_tokens=3), True)
    assert stream_usage(None, complete=False, prompt_estimate=7, text_chars=0) == (
        Usage(prompt_tokens=7, completion_tokens=0), True)
    # Anthropic reports the prompt at message_start: it is kept, the completion is estimated
    started = Usage(prompt_tokens=10, completion_tokens=1, cache_read_tokens=4)
    assert stream_usage(started, complete=False, prompt_estimate=7, text_chars=40) == (
        Usage(prompt_tokens=10, completion_tokens=10, cache_read_tokens=4), True)
    assert stream_usage(reported, complete=False, prompt_estimate=7, text_chars=4) == (reported, False)
