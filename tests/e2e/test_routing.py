"""Routing end to end: the real gateway app over HTTP, driven by the `openai` SDK, in
front of fake OpenAI upstreams scripted to fail. Health runs on a hand-driven clock so
cooldowns and breakers are crossed without sleeping."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest

from tests.fakes.failing_upstream import make_stalling_upstream
from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import (
    MESSAGES,
    keys_used,
    make_gateway,
    one_key_each,
    two_providers,
    wait_until,
)
from truckllm.clock import ManualClock

CONTEXT_TOO_LONG = {"error": {"message": "This model's maximum context length is 8192 tokens.",
                              "type": "invalid_request_error", "param": "messages",
                              "code": "context_length_exceeded"}}


async def test_fallback_order_and_headers(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(status=500), Scripted(status=503))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
        answer = raw.parse()
    assert answer.model == "chat"
    assert answer.choices[0].message.content == "Fake reply to: hello"
    # A 500 on p1 moves to the other target first (not to p1's other key).
    assert [r.body["model"] for r in one.requests] == ["m1"]
    assert [r.body["model"] for r in two.requests] == ["m2"]
    assert raw.headers["x-truckllm-attempts"] == "2"
    assert raw.headers["x-truckllm-provider"] == "p2"
    assert raw.headers["x-truckllm-model"] == "m2"


async def test_retries_of_the_same_target_back_off(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    """One target with one key: each retry waits a jittered, growing pause (0.05-0.1 s,
    then 0.1-0.2 s), so a struggling upstream is not hammered."""
    one, _ = fakes
    one.script(Scripted(status=503), Scripted(status=503))
    config = f"""
version: 1
providers:
  - {{id: p1, type: openai, base_url: {one.url}, keys: [{{id: k1, value: sk-one}}]}}
models:
  - {{alias: chat, targets: [{{provider: p1, model: m1}}]}}
routing: {{max_attempts: 3}}
"""
    async with make_gateway(config) as gw:
        answer = await gw.chat()
    assert answer.choices[0].message.content == "Fake reply to: hello"
    first, second, third = (r.received_at for r in one.requests)
    assert 0.05 <= second - first < 1.0
    assert 0.1 <= third - second < 1.0


async def test_keys_rotate_by_weight(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace("value: sk-one}", "value: sk-one, weight: 3}")
    async with make_gateway(config, clock=ManualClock()) as gw:
        for _ in range(8):
            await gw.chat()
    used = keys_used(one)
    assert (used.count("sk-one"), used.count("sk-two")) == (6, 2)
    assert not two.requests


async def test_429_cools_the_key_and_the_next_key_answers(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(status=429, headers={"Retry-After": "20"}))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
        first_key, second_key = keys_used(one)
        assert first_key != second_key and raw.headers["x-truckllm-attempts"] == "2"
        for _ in range(4):                                   # cooldown honoured
            await gw.chat()
        assert keys_used(one)[2:] == [second_key] * 4
        gw.clock.advance(21)                                 # cooldown over
        for _ in range(4):
            await gw.chat()
        assert first_key in keys_used(one)[6:]
    assert not two.requests


async def test_all_cooling_gives_503_with_retry_after(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url))
    one.script(Scripted(status=429, headers={"Retry-After": "40"}))
    two.script(Scripted(status=429, headers={"retry-after-ms": "25000"}))
    async with make_gateway(config, clock=ManualClock()) as gw:
        with pytest.raises(openai.APIStatusError) as first:
            await gw.chat()
        assert first.value.status_code == 503
        assert first.value.response.headers["Retry-After"] == "25"
        assert orjson.loads(first.value.response.content)["error"]["type"] == "overloaded_error"
        # Now nothing is called at all: answered at once from health.
        gw.clock.advance(5)
        status, headers, body = await gw.raw_chat()
        assert (status, headers["Retry-After"]) == (503, "20")
        assert orjson.loads(body)["error"]["code"] == "overloaded"
        assert (len(one.requests), len(two.requests)) == (1, 1)
        gw.clock.advance(21)                                 # p2 recovered
        answer = await gw.chat()
        assert answer.choices[0].message.content
        assert len(two.requests) == 2


async def test_short_retry_after_is_waited_for(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url)).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    async with make_gateway(config, clock=ManualClock()) as gw:
        # The gateway's clock is a hand clock, so the "short" wait is 0 real seconds:
        # what matters is that the request is retried on the same key and answered.
        one.script(Scripted(status=429, headers={"retry-after-ms": "0"}))
        answer = await gw.chat()
    assert answer.choices[0].message.content
    assert keys_used(one) == ["sk-one", "sk-one"]


@pytest.mark.parametrize(("wait_ms", "second_status"), [(0, 503), (5000, 200)])
async def test_wait_for_recovery(fakes: tuple[OpenAIFake, OpenAIFake], wait_ms: int,
                                 second_status: int) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing=f"  max_attempts: 1\n  wait_for_recovery_ms: {wait_ms}")).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    one.script(Scripted(status=429, headers={"retry-after-ms": "1000"}))
    async with make_gateway(config) as gw:
        first_status, _, _ = await gw.raw_chat()            # the only attempt is used up
        second, _, _ = await gw.raw_chat()                  # the key is cooling for 1 s
    assert first_status == 503
    assert second == second_status
    assert len(one.requests) == (2 if second_status == 200 else 1)


async def test_upstream_401_disables_the_key_until_reload(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url)
    one.script(Scripted(status=401))
    async with make_gateway(config, clock=ManualClock()) as gw:
        answer = await gw.chat()
        assert answer.choices[0].message.content
        rejected, good = keys_used(one)
        gw.clock.advance(100_000)
        for _ in range(4):
            await gw.chat()
        assert keys_used(one)[2:] == [good] * 4
        report = gw.routing.health.key_health(f"p1/{'k1' if rejected == 'sk-one' else 'k2'}")
        assert report.disabled and report.status == "down"


async def test_every_key_rejected_is_502_without_leaking_upstream_words(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url))
    leak = {"error": {"message": "Incorrect API key provided: sk-one", "type": "invalid_request_error",
                      "param": None, "code": "invalid_api_key"}}
    one.script(Scripted(status=401, body=leak))
    two.script(Scripted(status=403, body=leak))
    async with make_gateway(config, clock=ManualClock()) as gw:
        status, _, body = await gw.raw_chat()
    assert status == 502
    assert b"sk-one" not in body
    assert orjson.loads(body)["error"]["type"] == "upstream_error"


async def test_breaker_opens_and_half_opens(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  breaker_failures: 3"))
    one.script(*(Scripted(status=500) for _ in range(3)))
    async with make_gateway(config, clock=ManualClock()) as gw:
        for _ in range(3):
            await gw.chat()                                  # p1 fails, p2 answers
        assert len(one.requests) == 3
        await gw.chat()                                      # breaker open: p1 skipped
        assert len(one.requests) == 3 and len(two.requests) == 4
        gw.clock.advance(31)                                 # half-open: one trial
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
        assert raw.headers["x-truckllm-provider"] == "p1"
        assert len(one.requests) == 4
        assert gw.routing.health.target_status(("p1", "m1")) == "healthy"


async def test_4xx_passes_through_without_retry(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    bad = {"error": {"message": "Unsupported parameter: 'foo'", "type": "invalid_request_error",
                     "param": "foo", "code": "unsupported_parameter"}}
    one.script(Scripted(status=400, body=bad))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        with pytest.raises(openai.BadRequestError) as caught:
            await gw.chat()
    assert caught.value.status_code == 400
    assert caught.value.body == {"message": "Unsupported parameter: 'foo'", "type": "invalid_request_error",
                                 "param": "foo", "code": "unsupported_parameter"}
    assert len(one.requests) == 1 and not two.requests


async def test_context_overflow_goes_to_the_fallback_alias(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    fallback_on_context_overflow: long",
                           more_models="  - alias: long\n    targets: [{provider: p2, model: m2-long}]")
    one.script(Scripted(status=400, body=CONTEXT_TOO_LONG))
    async with make_gateway(config, clock=ManualClock()) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    assert raw.parse().model == "chat"
    assert raw.headers["x-truckllm-model"] == "m2-long"
    assert [r.body["model"] for r in two.requests] == ["m2-long"]


async def test_context_overflow_without_fallback_goes_back_to_the_client(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(status=400, body=CONTEXT_TOO_LONG))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        with pytest.raises(openai.BadRequestError) as caught:
            await gw.chat()
    assert caught.value.code == "context_length_exceeded"
    assert not two.requests


async def test_hung_upstream_is_504(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    # The limit leaves room for a loaded machine: the fakes, the gateway and the client share
    # one event loop, and the limit also covers the fake reading the request.
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 2",
                                        provider_extra="    first_byte_timeout_s: 0.5"))
    one.script(Scripted(hang=True))
    two.script(Scripted(hang=True))
    async with make_gateway(config, clock=ManualClock()) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.chat()
        assert caught.value.status_code == 504
        assert orjson.loads(caught.value.response.content)["error"]["type"] == "timeout_error"
        # Both hung upstreams were hung up on, not left generating.
        for fake in (one, two):
            await wait_until(lambda received=fake.requests: bool(received), "the request to reach the fake")
            await asyncio.wait_for(fake.requests[0].disconnected.wait(), 5)


async def test_hung_first_target_falls_back(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, provider_extra="    first_byte_timeout_s: 0.5")
    one.script(Scripted(hang=True))
    async with make_gateway(config, clock=ManualClock()) as gw:
        answer = await gw.chat()
    assert answer.choices[0].message.content
    assert len(two.requests) == 1


async def test_stream_failing_before_first_byte_is_retried(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(status=503))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        stream = await gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Fake reply to: hello"
    assert len(two.requests) == 1


async def test_no_retry_after_the_first_byte(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(drop_after_chunks=2))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        stream = await gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        seen: list[str] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        assert seen                                          # some output reached the client
        one.script(Scripted(drop_after_chunks=2))
        body = await gw.raw_stream()
    assert not two.requests                                  # never retried elsewhere
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["type"] == "upstream_error"


async def test_stalled_stream_is_ended_cleanly(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    _, two = fakes
    async with make_stalling_upstream(chunks_before_stall=2) as stalling:
        config = two_providers(stalling.url, two.url, provider_extra="    idle_timeout_s: 0.2")
        async with make_gateway(config, clock=ManualClock()) as gw:
            body = await gw.raw_stream()
            events = [e for e in body.split(b"\n\n") if e]
            assert events[-1] == b"data: [DONE]"
            error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
            assert error["type"] == "timeout_error" and "stalled" in error["message"]
            assert b'"content":" w1"' in body
            await asyncio.wait_for(stalling.caller_left.wait(), 5)   # upstream closed
            assert stalling.requests == 1 and not two.requests
            status = gw.routing.health.target_status(("p1", "m1"))
            assert status == "degraded"


async def test_round_robin_through_the_api(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: round_robin")
    async with make_gateway(config, clock=ManualClock()) as gw:
        for _ in range(10):
            await gw.chat()
    assert (len(one.requests), len(two.requests)) == (5, 5)


async def test_least_busy_avoids_the_target_with_a_request_in_flight(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: least_busy")
    one.script(Scripted(hang=True))
    async with make_gateway(config, clock=ManualClock()) as gw:
        stuck = asyncio.create_task(gw.chat())
        while not one.requests:                  # bounded by the fake's own hang limit
            await asyncio.sleep(0.005)
        for _ in range(6):
            await gw.chat()
        assert len(one.requests) == 1 and len(two.requests) == 6
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)


async def test_keys_at_their_own_limit_are_skipped(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = (two_providers(one.url, two.url)      # p1/k1 and p2/k1 full, p1/k2 after 3
              .replace("{id: k1, value: sk-one}", "{id: k1, value: sk-one, rpm: 0}")
              .replace("{id: k2, value: sk-two}", "{id: k2, value: sk-two, rpm: 3}")
              .replace("{id: k1, value: sk-three}", "{id: k1, value: sk-three, rpm: 0}"))
    async with make_gateway(config) as gw:
        for _ in range(3):
            await gw.chat()
        assert keys_used(one) == ["sk-two"] * 3
        status, headers, body = await gw.raw_chat()
    assert (status, headers["Retry-After"]) == (503, "1")
    assert orjson.loads(body)["error"]["type"] == "overloaded_error"
    assert len(one.requests) == 3 and not two.requests


async def test_lowest_latency_prefers_the_faster_target(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: lowest_latency")
    one.script(Scripted(delay_s=0.3))                        # p1 is slow when first measured
    async with make_gateway(config, clock=ManualClock()) as gw:
        for _ in range(6):
            await gw.chat()
    assert (len(one.requests), len(two.requests)) == (1, 5)


async def test_admin_providers_shows_health(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace(
        "version: 1\n", "version: 1\nserver: {admin_api_key: admin-secret-1}\n")
    one.script(Scripted(status=429, headers={"Retry-After": "20"}))
    async with make_gateway(config, clock=ManualClock()) as gw:
        await gw.chat()
        rejected = keys_used(one)[0]
        async with aiohttp.ClientSession() as session, session.get(
                gw.url.removesuffix("/v1") + "/admin/v1/providers",
                headers={"Authorization": "Bearer admin-secret-1"},
                timeout=aiohttp.ClientTimeout(total=10)) as response:
            assert response.status == 200
            body = await response.json()
        async with aiohttp.ClientSession() as session, session.get(
                gw.url.removesuffix("/v1") + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as response:
            metrics = await response.text()
    cooled_id = "k1" if rejected == "sk-one" else "k2"
    assert f'llm_upstream_status{{key="{cooled_id}",provider="p1",status="down"}} 1.0' in metrics
    assert 'llm_upstream_status{key="",provider="p1",status="degraded"} 1.0' in metrics
    assert 'llm_upstream_status{key="",provider="p2",status="healthy"} 1.0' in metrics
    providers = {p["id"]: p for p in body["providers"]}
    assert providers["p1"]["status"] == "degraded" and providers["p2"]["status"] == "healthy"
    keys = {k["id"]: k for k in providers["p1"]["keys"]}
    cooled = keys["k1" if rejected == "sk-one" else "k2"]
    other = keys["k2" if rejected == "sk-one" else "k1"]
    assert cooled["status"] == "down" and cooled["cooldown_until"].endswith("Z")
    assert (cooled["errors"], cooled["last_error"]) == (1, "429")
    assert other["status"] == "healthy" and other["cooldown_until"] is None
    assert "sk-one" not in str(body) and "sk-two" not in str(body)
