"""Upstream errors end to end: Retry-After of an overloaded answer, failures after the first
byte in metrics, absurd upstream values capped, an upstream echoing our key (never shown to
the client, never logged), error events in a stream, repeated failures cooling for longer."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import structlog.testing

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import (
    MESSAGES,
    make_gateway,
    one_key_each,
    two_providers,
)
from truckllm.clock import ManualClock

ADMIN = "admin-secret-routing"


async def test_overloaded_upstream_503_carries_retry_after(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 2"))
    one.script(Scripted(status=503))
    two.script(Scripted(status=529, headers={"Retry-After": "7"}))
    async with make_gateway(config, clock=ManualClock()) as gw:
        status, headers, body = await gw.raw_chat()
    assert (status, headers["Retry-After"]) == (503, "7")
    assert orjson.loads(body)["error"]["type"] == "overloaded_error"


async def test_overloaded_upstreams_with_open_breakers_give_their_recovery_time(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  breaker_failures: 1"))
    one.script(Scripted(status=503))
    two.script(Scripted(status=503))
    async with make_gateway(config, clock=ManualClock()) as gw:
        status, headers, _ = await gw.raw_chat()
        assert (status, headers["Retry-After"]) == (503, "30")   # both breakers open 30 s
        gw.clock.advance(10)
        status, headers, _ = await gw.raw_chat()                 # nothing called now
    assert (status, headers["Retry-After"], headers["x-truckllm-attempts"]) == (503, "20", "0")
    assert (len(one.requests), len(two.requests)) == (1, 1)


async def test_failure_after_the_first_byte_is_counted_in_metrics(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(drop_after_chunks=2))
    async with make_gateway(one_key_each(two_providers(one.url, two.url)), clock=ManualClock()) as gw:
        body = await gw.raw_stream()
        assert body.endswith(b"data: [DONE]\n\n") and b'"error"' in body
        metrics = await get_text(gw.url.removesuffix("/v1") + "/metrics")
    assert not two.requests
    [line] = [x for x in metrics.splitlines() if x.startswith("llm_upstream_errors_total{")]
    assert 'provider="p1"' in line and 'key="k1"' in line and line.endswith(" 1.0")
    assert gw.routing.health.key_health("p1/k1").errors == 1


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        return await response.text()


async def test_absurd_retry_after_is_capped_and_the_admin_api_still_answers(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace(
        "version: 1\n", f"version: 1\nserver: {{admin_api_key: {ADMIN}}}\n")
    one.script(Scripted(status=429, headers={"Retry-After": "1e300"}))
    async with make_gateway(config, clock=ManualClock()) as gw:
        answer = await gw.chat()                             # the other key answers
        assert answer.choices[0].message.content
        root = gw.url.removesuffix("/v1")
        async with aiohttp.ClientSession() as session, session.get(
                f"{root}/admin/v1/providers", headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=aiohttp.ClientTimeout(total=10)) as response:
            assert response.status == 200
            body = await response.json()
        keys = {k["id"]: k for k in body["providers"][0]["keys"]}
        cooled = [k for k in keys.values() if k["cooldown_until"]]
        assert len(cooled) == 1 and cooled[0]["status"] == "down"
        # Capped at one day: the key comes back after it.
        assert gw.routing.health.seconds_until_available(("p1", "m1"), f"p1/{cooled[0]['id']}") == 86_400


HEX_KEY = "0123456789abcdef0123456789abcdef"           # Azure-style: no recognisable prefix


def hex_key_config(one: str, two: str) -> str:
    return one_key_each(two_providers(one, two)).replace("sk-one", HEX_KEY).replace("sk-three", HEX_KEY)


async def test_an_upstream_echoing_our_key_never_shows_it_to_the_client(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    body = {"error": {"message": f"internal: key {HEX_KEY} broke", "type": "server_error",
                      "param": None, "code": None}}
    one.script(*[Scripted(status=500, body=body)] * 3)
    two.script(*[Scripted(status=500, body=body)] * 3)
    async with make_gateway(hex_key_config(one.url, two.url), clock=ManualClock()) as gw:
        status, _, raw = await gw.raw_chat()
        assert gw.routing.health.key_health("p1/k1").last_error == "500"     # never the message
    assert status == 502 and HEX_KEY not in raw.decode()
    assert orjson.loads(raw)["error"]["message"] == "internal: key *** broke"


async def test_an_error_event_mid_stream_never_shows_our_key(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    first = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m1",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}
    error = {"error": {"message": f"key {HEX_KEY} over quota, also sk-proj-abcdefghijkl",
                       "type": "server_error", "param": None, "code": None}}
    one.script(Scripted(chunks=[first, error], done=False))
    async with make_gateway(hex_key_config(one.url, two.url), clock=ManualClock()) as gw:
        body = await gw.raw_stream()
    assert b"Hi" in body and body.endswith(b"data: [DONE]\n\n")
    assert HEX_KEY.encode() not in body and b"sk-proj" not in body
    assert b"key *** over quota" in body


async def test_an_openai_error_event_before_any_output_is_retried(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    error = {"error": {"message": "The server had an error while processing your request.",
                       "type": "server_error", "param": None, "code": None}}
    one.script(Scripted(chunks=[error], done=False))
    async with make_gateway(two_providers(one.url, two.url), clock=ManualClock()) as gw:
        stream = await gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert gw.routing.health.target_status(("p1", "m1")) == "degraded"
    assert text == "Fake reply to: hello"
    assert len(one.requests) == 1 and len(two.requests) == 1


async def test_a_rejected_key_is_logged_loudly_without_its_value(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    leak = {"error": {"message": f"Incorrect API key provided: {HEX_KEY}", "type": "invalid_request_error",
                      "param": None, "code": "invalid_api_key"}}
    one.script(Scripted(status=401, body=leak))
    async with make_gateway(hex_key_config(one.url, two.url), clock=ManualClock()) as gw:
        with structlog.testing.capture_logs() as logs:
            answer = await gw.chat()
    assert answer.choices[0].message.content                 # p2 answered
    [rejected] = [e for e in logs if e["event"] == "upstream_key_rejected"]
    assert (rejected["log_level"], rejected["provider"], rejected["key"]) == ("error", "p1", "k1")
    assert "until the next reload" in rejected["action"]
    assert HEX_KEY not in str(logs)


async def test_repeated_failures_cool_and_reopen_for_longer(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 1\n  breaker_failures: 1")).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    one.script(Scripted(status=429), Scripted(status=429))   # no Retry-After: cooldown_s, doubled
    async with make_gateway(config, clock=ManualClock()) as gw:
        assert (await gw.raw_chat())[1]["Retry-After"] == "30"
        gw.clock.advance(31)
        assert (await gw.raw_chat())[1]["Retry-After"] == "60"
        gw.clock.advance(61)
        await gw.chat()                                      # recovered: the streak ends
        one.script(Scripted(status=500), Scripted(status=500))
        status, _, _ = await gw.raw_chat()                   # breaker opens for cooldown_s
        assert status == 502
        assert (await gw.raw_chat())[1]["Retry-After"] == "30"   # open: not called
        gw.clock.advance(31)                                 # half-open trial fails: longer
        await gw.raw_chat()
        status, headers, _ = await gw.raw_chat()
    assert (status, headers["Retry-After"]) == (503, "60")
    assert len(one.requests) == 5


async def test_the_503_after_a_failure_says_what_the_failure_was(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    """Every candidate cooling because of failures: the 503 names the last failure rather
    than a bare "overloaded", so the request after a failed one is no vaguer than it."""
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 1\n  breaker_failures: 1")).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    one.script(Scripted(status=500, body={"error": {"message": "the model crashed", "type": "server_error"}}))
    async with make_gateway(config, clock=ManualClock()) as gw:
        status, _, body = await gw.raw_chat()
        assert status == 502 and "the model crashed" in orjson.loads(body)["error"]["message"]
        status, headers, body = await gw.raw_chat()               # breaker open: not called
    error = orjson.loads(body)["error"]
    assert (status, headers["x-truckllm-attempts"], error["type"]) == (503, "0", "overloaded_error")
    assert "last failure" in error["message"] and "the model crashed" in error["message"]
    assert len(one.requests) == 1


async def test_overhead_excludes_the_wait_before_a_retry(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    """A 429 with `Retry-After: 1` makes the request wait a second for the key before its
    second attempt: that wait is not TruckLLM's own time."""
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url)).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    one.script(Scripted(status=429, headers={"Retry-After": "1"}))
    async with make_gateway(config) as gw:
        started = asyncio.get_running_loop().time()
        status, headers, _ = await gw.raw_chat()
        took_ms = (asyncio.get_running_loop().time() - started) * 1000
    assert (status, headers["x-truckllm-attempts"]) == (200, "2")
    assert took_ms >= 900                                         # the wait happened
    assert float(headers["x-truckllm-overhead-ms"]) < took_ms / 2  # and is not overhead
