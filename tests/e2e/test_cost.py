"""Cost through the real HTTP API: an Anthropic upstream that reports cache reads and
writes, called with the openai SDK (plain and streamed). Every kind of token reaches the
cost at its own rate, in the access line, the key's and the upstream key's spend,
and llm_cost_usd_total."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.anthropic_fake import make_anthropic_fake
from tests.fakes.wire_fake import Reply, sse
from tests.harness import ADMIN_KEY, imported_on_first_use, make_gateway

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = imported_on_first_use("anthropic")

# USD per million tokens, so one token of each kind costs 1, 2, 0.1 and 1.25 dollars
PRICING = ("{input_per_mtok: 1000000, output_per_mtok: 2000000, "
           "cache_read_per_mtok: 100000, cache_write_per_mtok: 1250000}")
UPSTREAM_USAGE = {"input_tokens": 100, "cache_read_input_tokens": 1000,
                  "cache_creation_input_tokens": 200, "output_tokens": 50}
EXPECTED_LINES = [
    {"kind": "input", "tokens": 100, "usd_per_mtok": 1_000_000.0, "usd": 100.0},
    {"kind": "cache_read", "tokens": 1000, "usd_per_mtok": 100_000.0, "usd": 100.0},
    {"kind": "cache_write", "tokens": 200, "usd_per_mtok": 1_250_000.0, "usd": 250.0},
    {"kind": "output", "tokens": 50, "usd_per_mtok": 2_000_000.0, "usd": 100.0},
]
COST = 550.0


def config(url: str) -> str:
    return f"""\
version: 1
server: {{admin_api_key: {ADMIN_KEY}}}
providers:
  - {{id: claude, type: anthropic, base_url: "{url}", keys: [{{id: k1, value: sk-ant-secret-1}}]}}
models:
  - alias: sonnet
    targets: [{{provider: claude, model: claude-sonnet-4-5}}]
    pricing: {PRICING}
keys:
  - {{id: team-a, key: key-a, rpm: 100, budget_usd: 10000}}
"""


def message() -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "cached answer"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": UPSTREAM_USAGE}


def stream_events() -> list[str]:
    start = {**message(), "content": [], "stop_reason": None,
             "usage": {**UPSTREAM_USAGE, "output_tokens": 1}}
    delta = {"type": "text_delta", "text": "cached answer"}
    return [sse({"type": "message_start", "message": start}, "message_start"),
            sse({"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"),
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                 "usage": {"output_tokens": 50}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]


async def metric(root: str, name: str, **labels: str) -> float:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(root + "/metrics") as response:
        text = await response.text()
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def test_cache_reads_and_writes_are_priced_logged_spent_and_exported(tmp_path: Path) -> None:
    async with make_anthropic_fake() as fake, make_gateway(config(fake.url), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        fake.script(Reply(body=message()), Reply(events=stream_events()))
        hello = [{"role": "user", "content": "hello"}]
        with gateway.log_lines() as logs:
            plain = await client.chat.completions.create(model="sonnet", messages=hello)  # type: ignore[arg-type]
            stream = await client.chat.completions.create(
                model="sonnet", messages=hello, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True})
            chunks = [chunk async for chunk in stream]
        for usage in (plain.usage, chunks[-1].usage):
            assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (1300, 50)
            assert usage.prompt_tokens_details is not None
            assert usage.prompt_tokens_details.cached_tokens == 1000
        costs = [line for line in logs if line["event"] == "request" and line["cost_lines"]]
        assert [(c["cost_usd"], c["cost_lines"], c["usage_estimated"]) for c in costs] == \
            [(COST, EXPECTED_LINES, False)] * 2
        _, keys = await gateway.admin("GET", "/admin/v1/keys")
        [report] = keys["keys"]
        assert (report["spend_usd"], report["prompt_tokens"], report["completion_tokens"]) == \
            (2 * COST, 2600, 100)
        assert report["budget_left_usd"] == 10000 - 2 * COST
        _, providers = await gateway.admin("GET", "/admin/v1/providers")
        assert providers["providers"][0]["keys"][0]["spend_usd"] == 2 * COST
        assert await metric(gateway.root, "llm_cost_usd_total", model="sonnet", key="team-a") == 2 * COST
        assert "sk-ant-secret-1" not in str(providers) + str(keys) + str(logs)


async def test_messages_api_carries_the_headers_and_refuses_in_anthropic_shape(tmp_path: Path) -> None:
    limited = config("URL").replace("rpm: 100, budget_usd: 10000", "rpm: 3, budget_usd: 10000")
    async with make_anthropic_fake() as fake, \
            make_gateway(limited.replace("URL", fake.url), directory=tmp_path) as gateway, \
            anthropic.AsyncAnthropic(base_url=gateway.root, api_key="key-a", max_retries=0, timeout=10) as client:
        hello: Any = [{"role": "user", "content": "hello"}]
        plain = await client.messages.with_raw_response.create(
            model="sonnet", max_tokens=10, messages=hello)
        assert plain.headers["x-ratelimit-remaining-requests"] == "2"
        stream = await client.messages.with_raw_response.create(
            model="sonnet", max_tokens=10, messages=hello, stream=True)
        assert stream.headers["x-ratelimit-remaining-requests"] == "1"
        assert [event.type async for event in await stream.parse()][-1] == "message_stop"
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(model="nope", max_tokens=10, messages=hello)
        assert missing.value.response.headers["x-ratelimit-limit-requests"] == "3"
        await client.messages.create(model="sonnet", max_tokens=10, messages=hello)
        with pytest.raises(anthropic.RateLimitError) as refused:
            await client.messages.create(model="sonnet", max_tokens=10, messages=hello)
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"]["type"] == "rate_limit_error"
        headers = refused.value.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "0" and int(headers["retry-after"]) > 0
        _, keys = await gateway.admin("GET", "/admin/v1/keys")
        assert keys["keys"][0]["requests"] == 3                # refused ones count for nothing
        await client.close()


async def test_a_native_anthropic_stream_cut_by_upstream_is_charged_an_estimate(
        tmp_path: Path) -> None:
    """/v1/messages to an Anthropic upstream relays Anthropic events as they are; when the
    upstream drops before message_delta, the key still pays for the prompt it reported and
    the text that was streamed."""
    async with make_anthropic_fake() as fake, make_gateway(config(fake.url), directory=tmp_path) as gateway:
        events = stream_events()
        piece = sse({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": "abcd" * 10}}, "content_block_delta")
        fake.script(Reply(events=[*events[:2], piece, piece, piece, *events[2:]],
                          drop_after_events=5))
        client = anthropic.AsyncAnthropic(base_url=gateway.root, api_key="key-a", max_retries=0, timeout=10)
        with gateway.log_lines() as logs:
            stream = await client.messages.create(model="sonnet", max_tokens=10, stream=True,
                                                  messages=[{"role": "user", "content": "hello"}])
            with pytest.raises(anthropic.APIError):
                async for _ in stream:
                    pass
            await client.close()
        _, keys = await gateway.admin("GET", "/admin/v1/keys")
        report = keys["keys"][0]
        # message_start reported the prompt (1300 with the cache); 120 characters streamed
        assert (report["prompt_tokens"], report["completion_tokens"]) == (1300, 30), report
        [cost] = [line for line in logs if line["event"] == "request" and line["cost_lines"]]
        assert cost["usage_estimated"] is True and cost["cost_usd"] == report["spend_usd"]
        assert [line["kind"] for line in cost["cost_lines"]] == \
            ["input", "cache_read", "cache_write", "output"]
