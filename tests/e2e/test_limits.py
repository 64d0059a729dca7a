"""Limits through the real HTTP API with the openai SDK: every limit trips with the right
status, type, code and headers; windows reopen; tpm reconciles; budgets hold mid-stream;
upstream keys at their limit are skipped; 64 concurrent clients get exactly rpm."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.harness import ADMIN_KEY, make_gateway
from truckllm.config.loader import load_file
from truckllm.limits import ManualClock, estimate_prompt_tokens
from truckllm.runtime.state import build_state
from truckllm.server.keys import STATE

HELLO = [{"role": "user", "content": "hello there"}]


def limits_config(upstream_url: str, *, keys: str, limits: str = "", provider_keys: str = "",
                pricing: str = "{input_per_mtok: 1000000, output_per_mtok: 1000000}") -> str:
    provider_keys = provider_keys or "[{id: k1, value: sk-upstream-1}]"
    return f"""\
version: 1
server:
  admin_api_key: {ADMIN_KEY}
providers:
  - id: up
    type: openai
    base_url: {upstream_url}
    keys: {provider_keys}
models:
  - alias: gpt-4o-mini
    targets: [{{provider: up, model: gpt-4o-mini}}]
    pricing: {pricing}
    context_window: 128000
keys:
{keys}
{limits}
"""


async def chat(client: AsyncOpenAI, **extra: Any) -> Any:
    return await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, **extra)  # type: ignore[arg-type]


def assert_refused(error: openai.APIStatusError, status: int, type_: str, code: str) -> None:
    assert error.status_code == status
    body = error.body
    assert isinstance(body, dict)
    assert (body.get("type"), body.get("code")) == (type_, code), body


@pytest.fixture
async def fake() -> Any:
    async with make_openai_fake() as running:
        yield running


async def test_rpm_counts_down_trips_with_429_and_reopens_after_the_window(
        fake: OpenAIFake, tmp_path: Path) -> None:
    clock = ManualClock()
    keys = "  - {id: team-a, key: key-a, rpm: 3}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=clock) as gateway:
        client = gateway.client("key-a")
        remaining = []
        for _ in range(3):
            raw = await chat(client)
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            clock.advance(10)
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(client)
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        headers = refused.value.response.headers
        assert headers["retry-after"] == "30"                 # the first request leaves at +60 s
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == "50s"
        assert "x-request-id" in headers
        assert len(fake.requests) == 3                         # refused before any upstream call
        clock.advance(30)
        raw = await chat(client)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"   # 2 still in the window + this
        clock.advance(60)
        assert (await chat(client)).headers["x-ratelimit-remaining-requests"] == "2"


async def test_tpm_reserves_the_estimate_then_reconciles_with_real_usage(
        fake: OpenAIFake, tmp_path: Path) -> None:
    clock = ManualClock()
    keys = "  - {id: team-a, key: key-a, tpm: 1000}"
    long_word = "x" * 2000                                     # ~500 tokens estimated, 1 word real
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=clock) as gateway:
        client = gateway.client("key-a")
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": long_word}])
        usage = raw.parse().usage
        assert usage is not None
        assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
        # the header is computed after settlement: real usage, not the 500-token estimate
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - usage.total_tokens)
        with pytest.raises(openai.RateLimitError) as refused:  # ~997 estimated > 995 left
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 3970}])
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        assert "x-ratelimit-remaining-tokens" in refused.value.response.headers
        assert "retry-after" in refused.value.response.headers
        await client.chat.completions.create(              # but a ~900-token one fits
            model="gpt-4o-mini", messages=[{"role": "user", "content": "z" * 3500}])
        with pytest.raises(openai.RateLimitError) as too_big:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "q" * 5000}])
        assert "too large" in str(too_big.value)
        assert "retry-after" not in too_big.value.response.headers


async def test_streams_count_tokens_even_when_the_client_did_not_ask_for_usage(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, tpm: 100000}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        chunks = [chunk async for chunk in await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True)]
        assert chunks and all(chunk.usage is None for chunk in chunks)
        assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
        _, body = await gateway.admin("GET", "/admin/v1/keys")
        [report] = body["keys"]
        assert report["tokens"] > 0 and report["prompt_tokens"] == 2   # "hello there"
        assert report["current"]["tokens_last_minute"] == report["tokens"]


async def test_max_concurrent_holds_a_slot_for_the_whole_stream(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, max_concurrent: 1, rpm: 100}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        fake.script(Scripted(chunk_delay_s=0.05))
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
        first = await stream.__anext__()
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(client)
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        assert refused.value.response.headers["retry-after"] == "1"
        assert "max_concurrent" in str(refused.value)
        rest = [chunk async for chunk in stream]
        assert rest[-1].choices[0].finish_reason == "stop"
        await chat(client)                                     # the slot came back at the end


async def test_a_client_that_leaves_mid_stream_gives_its_slot_back(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, max_concurrent: 1}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        fake.script(Scripted(chunk_delay_s=0.2))
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
        await stream.__anext__()
        await stream.close()                                   # the client goes away
        in_flight = 1
        for _ in range(200):                                   # bounded: at most ~2 s
            _, body = await gateway.admin("GET", "/admin/v1/keys")
            in_flight = body["keys"][0]["current"]["in_flight"]
            if in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert in_flight == 0
        await chat(client)


@pytest.mark.parametrize("limit", ["rpm", "tpm", "max_concurrent"])
async def test_a_zero_limit_refuses_everything_without_retry_after(
        fake: OpenAIFake, tmp_path: Path, limit: str) -> None:
    keys = f"  - {{id: team-a, key: key-a, {limit}: 0}}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(gateway.client("key-a"))
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        assert f"{limit} limit of key 'team-a' is 0" in str(refused.value)
        assert "retry-after" not in refused.value.response.headers
        assert not fake.requests


async def test_gateway_limits_span_keys(fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a}\n  - {id: team-b, key: key-b, rpm: 50}"
    config = limits_config(fake.url, keys=keys, limits="limits: {rpm: 2}")
    async with make_gateway(config, directory=tmp_path, clock=ManualClock()) as gateway:
        raw = await chat(gateway.client("key-a"))
        assert "x-ratelimit-limit-requests" not in raw.headers    # team-a has no limits itself
        await chat(gateway.client("key-b"))
        with gateway.log_lines() as logs, pytest.raises(openai.RateLimitError) as refused:
            await chat(gateway.client("key-b"))
        access = [entry for entry in logs if entry["event"] == "request"]
        assert [entry["error"] for entry in access] == ["rate_limited:gateway"]
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        assert "gateway" in str(refused.value)
        assert refused.value.response.headers["retry-after"] == "60"
        assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "49"


async def test_gateway_tpm_spans_keys_and_reconciles(fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a}\n  - {id: team-b, key: key-b}"
    config = limits_config(fake.url, keys=keys, limits="limits: {tpm: 1000}")
    async with make_gateway(config, directory=tmp_path, clock=ManualClock()) as gateway:
        await gateway.client("key-a").chat.completions.create(   # ~750 estimated, a few real
            model="gpt-4o-mini", messages=[{"role": "user", "content": "w" * 3000}])
        await gateway.client("key-b").chat.completions.create(   # fits only after reconciling
            model="gpt-4o-mini", messages=[{"role": "user", "content": "v" * 3000}])
        with pytest.raises(openai.RateLimitError) as refused:    # this one would pass 1000
            await gateway.client("key-a").chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "u" * 3970}])
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        assert "gateway" in str(refused.value)
        assert "retry-after" in refused.value.response.headers
        assert len(fake.requests) == 2                            # refused before upstream


async def test_gateway_max_concurrent_spans_keys_until_the_stream_ends(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a}\n  - {id: team-b, key: key-b}"
    config = limits_config(fake.url, keys=keys, limits="limits: {max_concurrent: 1}")
    async with make_gateway(config, directory=tmp_path) as gateway:
        fake.script(Scripted(chunk_delay_s=0.05))
        stream = await gateway.client("key-a").chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True)
        await stream.__anext__()
        with pytest.raises(openai.RateLimitError) as refused:     # another key, same gateway
            await chat(gateway.client("key-b"))
        assert_refused(refused.value, 429, "rate_limit_error", "rate_limit_exceeded")
        assert refused.value.response.headers["retry-after"] == "1"
        [chunk async for chunk in stream]
        await chat(gateway.client("key-b"))                       # the slot came back


async def test_budget_refuses_before_any_upstream_call(fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, budget_usd: 1, budget_period: daily, rpm: 100}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        await chat(client)                                     # every token costs $1: over now
        upstream_calls = len(fake.requests)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await chat(client)
        assert_refused(refused.value, 403, "permission_error", "budget_exceeded")
        assert "x-ratelimit-limit-requests" in refused.value.response.headers
        assert len(fake.requests) == upstream_calls
        status, body = await gateway.admin("GET", "/admin/v1/keys")
        assert status == 200
        [report] = body["keys"]
        assert report["id"] == "team-a" and report["requests"] == 1
        assert report["spend_usd"] == pytest.approx(report["tokens"])
        assert report["budget_left_usd"] == 0.0 and report["budget_period"] == "daily"
        assert report["period_resets_at"].endswith("T00:00:00Z")
        assert report["limits"] == {"rpm": 100, "tpm": None, "max_concurrent": None}


async def test_a_stream_that_crosses_the_budget_finishes_and_the_next_request_is_refused(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, budget_usd: 0.5}"
    pricing = "{input_per_mtok: 50000, output_per_mtok: 50000}"   # $0.05 a token
    async with make_gateway(limits_config(fake.url, keys=keys, pricing=pricing), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        fake.script(Scripted(chunk_delay_s=0.01), Scripted(chunk_delay_s=0.01))
        words = [{"role": "user", "content": "one two three four five"}]
        first = await client.chat.completions.create(
            model="gpt-4o-mini", messages=words, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        second = await client.chat.completions.create(         # both admitted under budget
            model="gpt-4o-mini", messages=words, stream=True)  # type: ignore[arg-type]
        first_chunks = [chunk async for chunk in first]         # the budget is crossed here
        usage = first_chunks[-1].usage
        assert usage is not None and usage.total_tokens * 0.05 > 0.5
        second_chunks = [chunk async for chunk in second]       # ...and the other stream goes on
        assert [c.choices[0].finish_reason for c in second_chunks if c.choices][-1] == "stop"
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await chat(client)
        assert_refused(refused.value, 403, "permission_error", "budget_exceeded")
        _, body = await gateway.admin("GET", "/admin/v1/keys")
        assert body["keys"][0]["spend_usd"] == pytest.approx(2 * 0.05 * usage.total_tokens)


async def test_a_client_that_cuts_a_stream_is_charged_an_estimate_and_cannot_dodge_the_budget(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, budget_usd: 5, tpm: 100000}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        fake.script(Scripted(chunk_delay_s=0.05, text="word " * 40))
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
        received = [await stream.__anext__() for _ in range(4)]
        assert "".join(c.choices[0].delta.content or "" for c in received)
        with gateway.log_lines() as logs:
            await stream.close()                               # gone before the usage chunk
            report: dict[str, Any] = {}
            for _ in range(200):                               # bounded: at most ~2 s
                _, body = await gateway.admin("GET", "/admin/v1/keys")
                report = body["keys"][0]
                if report["current"]["in_flight"] == 0:
                    break
                await asyncio.sleep(0.01)
        estimate = estimate_prompt_tokens({"messages": HELLO})
        assert report["prompt_tokens"] == estimate and report["completion_tokens"] >= 1
        assert report["spend_usd"] == pytest.approx(report["tokens"])   # $1 a token
        assert report["current"]["tokens_last_minute"] == report["tokens"]
        [cost] = [line for line in logs if line["event"] == "request" and line["cost_lines"]]
        assert cost["usage_estimated"] is True and cost["cost_usd"] == report["spend_usd"]
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await chat(client)
        assert_refused(refused.value, 403, "permission_error", "budget_exceeded")


@pytest.mark.parametrize(("period", "resets_at", "hours_to_reset"), [
    ("daily", "2026-01-16T00:00:00Z", 12),          # the clock starts Thu 2026-01-15 12:00 UTC
    ("weekly", "2026-01-19T00:00:00Z", 3 * 24 + 12),
    ("monthly", "2026-02-01T00:00:00Z", 16 * 24 + 12),
    ("total", None, None),
])
async def test_budget_periods_reset_at_their_calendar_boundary_in_utc(
        fake: OpenAIFake, tmp_path: Path, period: str, resets_at: str | None,
        hours_to_reset: int | None) -> None:
    keys = f"  - {{id: team-a, key: key-a, budget_usd: 1, budget_period: {period}}}"
    clock = ManualClock()
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=clock) as gateway:
        client = gateway.client("key-a")
        await chat(client)                                     # $1 a token: over budget
        _, body = await gateway.admin("GET", "/admin/v1/keys")
        assert body["keys"][0]["period_resets_at"] == resets_at
        clock.advance(((hours_to_reset or 24 * 400) - 1) * 3600.0)   # an hour before
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await chat(client)
        assert_refused(refused.value, 403, "permission_error", "budget_exceeded")
        clock.advance(3600.0)                                  # the boundary
        if resets_at is None:                                  # total: never resets
            with pytest.raises(openai.PermissionDeniedError):
                await chat(client)
            return
        await chat(client)                                     # a fresh period
        _, body = await gateway.admin("GET", "/admin/v1/keys")
        [report] = body["keys"]
        assert report["period_start"] == resets_at and report["requests"] == 1
        assert report["lifetime"]["requests"] == 2


async def test_admin_reset_gives_the_key_a_fresh_period(fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, budget_usd: 1, rpm: 1}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=ManualClock()) as gateway:
        client = gateway.client("key-a")
        await chat(client)
        with pytest.raises(openai.PermissionDeniedError):
            await chat(client)
        assert (await gateway.admin("POST", "/admin/v1/keys/team-a/reset", key=None))[0] == 401
        assert (await gateway.admin("POST", "/admin/v1/keys/team-a/reset", key="wrong"))[0] == 401
        status, body = await gateway.admin("POST", "/admin/v1/keys/nobody/reset")
        assert (status, body["error"]["type"]) == (404, "not_found_error")
        status, body = await gateway.admin("POST", "/admin/v1/keys/team-a/reset")
        assert status == 200 and body["key"]["spend_usd"] == 0.0 and body["key"]["requests"] == 0
        assert body["key"]["lifetime"]["requests"] == 1
        raw = await chat(client)                              # rpm window reset too
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"


async def test_admin_routes_are_off_without_an_admin_key(fake: OpenAIFake, tmp_path: Path) -> None:
    config = limits_config(fake.url, keys="  - {id: team-a, key: key-a}").replace(
        f"server:\n  admin_api_key: {ADMIN_KEY}\n", "")
    async with make_gateway(config, directory=tmp_path) as gateway:
        status, body = await gateway.admin("GET", "/admin/v1/keys")
        assert (status, body["error"]["type"]) == (404, "not_found_error")


async def test_every_response_for_a_key_with_limits_carries_the_headers(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, rpm: 5, tpm: 5000}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=ManualClock()) as gateway:
        client = gateway.client("key-a")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="no-such-model", messages=HELLO)
        assert missing.value.response.headers["x-ratelimit-remaining-requests"] == "5"
        fake.script(Scripted(status=400))
        with pytest.raises(openai.BadRequestError) as upstream_error:
            await chat(client)
        headers = upstream_error.value.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "4"
        assert headers["x-ratelimit-limit-tokens"] == "5000"
        assert headers["x-ratelimit-reset-tokens"] == "1m0s"
        stream = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, stream=True)
        assert stream.headers["x-ratelimit-remaining-requests"] == "3"
        assert [c async for c in stream.parse()]
        models = await client.models.with_raw_response.list()
        assert models.headers["x-ratelimit-limit-requests"] == "5"
        [entry] = models.parse().data
        assert entry.model_extra == {"context_window": 128000,
                                     "pricing": {"input_per_mtok": 1000000.0,
                                                 "output_per_mtok": 1000000.0}}


async def test_64_concurrent_clients_on_one_key_get_exactly_rpm(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, rpm: 10}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=ManualClock()) as gateway:
        client = gateway.client("key-a")       # its pool opens one connection per request

        async def one() -> int:
            try:
                await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            except openai.RateLimitError:
                return 429
            return 200

        statuses = await asyncio.gather(*(one() for _ in range(64)))
        assert statuses.count(200) == 10 and statuses.count(429) == 54
        assert len(fake.requests) == 10
        gateway_clock = gateway.limiter.clock
        assert isinstance(gateway_clock, ManualClock)
        gateway_clock.advance(60)                               # the next window: exactly 10 again
        statuses = await asyncio.gather(*(one() for _ in range(64)))
        assert statuses.count(200) == 10 and statuses.count(429) == 54
        assert len(fake.requests) == 20
        await client.close()


async def test_64_concurrent_streams_get_exactly_max_concurrent_until_they_end(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, max_concurrent: 8}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path) as gateway:
        client = gateway.client("key-a")
        # Admitted streams stay open (a chunk every 0.3 s) while all 64 requests arrive.
        fake.script(*[Scripted(chunk_delay_s=0.3, text="word " * 30) for _ in range(64)])
        opened: list[Any] = []

        async def one() -> int:
            try:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=HELLO, stream=True)
            except openai.RateLimitError:
                return 429
            opened.append(stream)
            return 200

        statuses = await asyncio.gather(*(one() for _ in range(64)))
        assert statuses.count(200) == 8 and statuses.count(429) == 56
        _, body = await gateway.admin("GET", "/admin/v1/keys")
        assert body["keys"][0]["current"]["in_flight"] == 8
        for stream in opened[:4]:
            await stream.close()                                # four clients leave mid-stream
        in_flight = 8
        for _ in range(200):                                    # bounded: at most ~2 s
            _, body = await gateway.admin("GET", "/admin/v1/keys")
            in_flight = body["keys"][0]["current"]["in_flight"]
            if in_flight == 4:
                break
            await asyncio.sleep(0.01)
        assert in_flight == 4                                   # the other four still hold theirs
        for stream in opened[4:]:
            await stream.close()
        await client.close()


async def test_upstream_keys_at_their_limit_are_skipped_then_503(
        fake: OpenAIFake, tmp_path: Path) -> None:
    provider_keys = "[{id: k1, value: sk-up-1, rpm: 1}, {id: k2, value: sk-up-2, rpm: 1}]"
    config = limits_config(fake.url, keys="  - {id: team-a, key: key-a}", provider_keys=provider_keys)
    async with make_gateway(config, directory=tmp_path, clock=ManualClock()) as gateway:
        client = gateway.client("key-a")
        await chat(client)
        await chat(client)
        used = sorted(request.headers["authorization"] for request in fake.requests)
        assert used == ["Bearer sk-up-1", "Bearer sk-up-2"]     # the busy key was skipped
        with pytest.raises(openai.InternalServerError) as overloaded:
            await chat(client)
        assert overloaded.value.status_code == 503
        assert isinstance(overloaded.value.body, dict)
        assert overloaded.value.body["type"] == "overloaded_error"
        assert overloaded.value.response.headers["retry-after"] == "60"
        assert len(fake.requests) == 2                          # no upstream 429 collected
        assert gateway.limiter.upstream.key("up/k1").usage.requests == 1
        assert gateway.limiter.upstream.key("up/k1").usage.tokens > 0


async def test_upstream_key_tpm_skips_a_key_the_prompt_does_not_fit(
        fake: OpenAIFake, tmp_path: Path) -> None:
    provider_keys = "[{id: k1, value: sk-up-1, tpm: 10}, {id: k2, value: sk-up-2, tpm: 1000}]"
    config = limits_config(fake.url, keys="  - {id: team-a, key: key-a}", provider_keys=provider_keys)
    async with make_gateway(config, directory=tmp_path, clock=ManualClock()) as gateway:
        client = gateway.client("key-a")
        long_prompt = [{"role": "user", "content": "x" * 200}]   # ~60 tokens estimated
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o-mini", messages=long_prompt)  # type: ignore[arg-type]
        assert [r.headers["authorization"] for r in fake.requests] == ["Bearer sk-up-2"] * 2
        with pytest.raises(openai.InternalServerError) as overloaded:   # fits no key, ever
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 8000}])
        assert overloaded.value.status_code == 503 and len(fake.requests) == 2
        k2 = gateway.limiter.upstream.key("up/k2").usage
        assert k2.requests == 2 and k2.tokens > 0
        assert gateway.limiter.upstream.key("up/k1").usage.requests == 0


async def test_a_reload_keeps_usage_of_surviving_keys_and_applies_new_limits(
        fake: OpenAIFake, tmp_path: Path) -> None:
    keys = "  - {id: team-a, key: key-a, rpm: 10, budget_usd: 1000}\n  - {id: team-b, key: key-b}"
    async with make_gateway(limits_config(fake.url, keys=keys), directory=tmp_path, clock=ManualClock()) as gateway:
        await chat(gateway.client("key-a"))
        await chat(gateway.client("key-b"))
        reloaded = tmp_path / "reloaded.yaml"
        reloaded.write_text(limits_config(fake.url, keys="  - {id: team-a, key: key-a, rpm: 2}"))
        gateway.app[STATE].swap(build_state(load_file(reloaded, env={}), version=2))
        raw = await chat(gateway.client("key-a"))
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"   # the window survived
        with pytest.raises(openai.AuthenticationError):
            await chat(gateway.client("key-b"))
        _, body = await gateway.admin("GET", "/admin/v1/keys")
        [report] = body["keys"]
        assert report["id"] == "team-a" and report["requests"] == 2
        assert report["spend_usd"] > 0                               # spend survived too
        assert set(gateway.limiter.snapshot()["client_keys"]) == {"team-a"}
