"""Routing, audited end to end (issue 5): the real app over HTTP with the `openai` SDK in
front of fake upstreams. Distributions over a few hundred requests, key rotation when an
alias has several targets on one provider, each per-provider timeout, Retry-After of an
overloaded answer, failures after the first byte in metrics, and routing state across a
real reload (POST /admin/v1/reload)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
import structlog.testing
from openai import AsyncOpenAI

from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.harness import (
    MESSAGES,
    FakeClock,
    keys_used,
    make_gateway,
    one_key_each,
    two_providers,
)

ADMIN = "admin-secret-audit5"
BATCH = 20


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[OpenAIFake, OpenAIFake]]:
    async with make_openai_fake() as one, make_openai_fake() as two:
        yield one, two


async def many_chats(client: AsyncOpenAI, count: int, model: str = "chat") -> None:
    """`count` requests, BATCH at a time, as concurrent clients would send them."""
    for start in range(0, count, BATCH):
        await asyncio.gather(*(client.chat.completions.create(model=model, messages=MESSAGES)
                               for _ in range(min(BATCH, count - start))))


def models_used(*fakes: OpenAIFake) -> Counter[str]:
    return Counter(r.body["model"] for fake in fakes for r in fake.requests)


# -- distributions -----------------------------------------------------------------------


async def test_round_robin_spreads_evenly_over_hundreds_of_requests(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: round_robin")
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        await many_chats(gw.client(), 300)
    assert (len(one.requests), len(two.requests)) == (150, 150)


async def test_weighted_targets_follow_their_weights_over_hundreds_of_requests(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: weighted").replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1, weight: 3}, {provider: p2, model: m2, weight: 1}]")
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        await many_chats(gw.client(), 400)
    # Smooth weighted round robin is exact over any whole cycle; allow 5 % for the batches.
    assert abs(len(one.requests) - 300) <= 20 and len(one.requests) + len(two.requests) == 400


async def test_key_weights_hold_over_hundreds_of_requests(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace("value: sk-one}", "value: sk-one, weight: 2}")
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        await many_chats(gw.client(), 300)
    used = Counter(keys_used(one))
    assert abs(used["sk-one"] - 200) <= 15 and used["sk-one"] + used["sk-two"] == 300


async def test_zero_weight_key_only_serves_when_the_others_cannot(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace("value: sk-two}", "value: sk-two, weight: 0}")
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        await many_chats(gw.client(), 40)
        assert set(keys_used(one)) == {"sk-one"}
        one.script(Scripted(status=429, headers={"Retry-After": "30"}))
        await gw.chat()                                      # sk-one cools: sk-two steps in
        await gw.chat()
    assert keys_used(one)[40:] == ["sk-one", "sk-two", "sk-two"]


async def test_keys_rotate_when_an_alias_has_two_targets_on_one_provider(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}, {provider: p1, model: m1-mini}]")
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        for _ in range(10):
            await gw.chat()
    assert models_used(one) == {"m1": 10}
    assert Counter(keys_used(one)) == {"sk-one": 5, "sk-two": 5}


# -- 503 from an overloaded upstream -------------------------------------------------------


async def test_overloaded_upstream_503_carries_retry_after(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 2"))
    one.script(Scripted(status=503))
    two.script(Scripted(status=529, headers={"Retry-After": "7"}))
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        status, headers, body = await gw.raw_chat()
    assert (status, headers["Retry-After"]) == (503, "7")
    assert orjson.loads(body)["error"]["type"] == "overloaded_error"


async def test_overloaded_upstreams_with_open_breakers_give_their_recovery_time(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  breaker_failures: 1"))
    one.script(Scripted(status=503))
    two.script(Scripted(status=503))
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        status, headers, _ = await gw.raw_chat()
        assert (status, headers["Retry-After"]) == (503, "30")   # both breakers open 30 s
        gw.clock.advance(10)
        status, headers, _ = await gw.raw_chat()                 # nothing called now
    assert (status, headers["Retry-After"], headers["x-truckllm-attempts"]) == (503, "20", "0")
    assert (len(one.requests), len(two.requests)) == (1, 1)


# -- failures after the first byte ---------------------------------------------------------


async def test_failure_after_the_first_byte_is_counted_in_metrics(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    one.script(Scripted(drop_after_chunks=2))
    async with make_gateway(one_key_each(two_providers(one.url, two.url)), health_clock=FakeClock()) as gw:
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


# -- timeouts, one per field ---------------------------------------------------------------


@contextmanager
def unreachable_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connection attempt gets no answer
    (the kernel drops its SYN), just like a firewalled or dead host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_connect_timeout_moves_on_and_alone_is_502(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    _, two = fakes
    with unreachable_port() as port:
        config = one_key_each(two_providers(f"http://127.0.0.1:{port}/v1", two.url,
                                            provider_extra="    connect_timeout_s: 0.3"))
        async with make_gateway(config, health_clock=FakeClock()) as gw:
            raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
            assert raw.headers["x-truckllm-attempts"] == "2" and raw.headers["x-truckllm-provider"] == "p2"
            assert gw.routing.health.key_health("p1/k1").last_error is not None
        alone = config.replace("targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
                               "targets: [{provider: p1, model: m1}]")
        async with make_gateway(alone, health_clock=FakeClock()) as gw:
            status, _, body = await gw.raw_chat()
    error = orjson.loads(body)["error"]
    assert (status, error["type"]) == (502, "upstream_error")
    assert "connect timed out" in error["message"]


async def test_first_byte_timeout_of_a_stream_moves_on(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, provider_extra="    first_byte_timeout_s: 0.3")
    one.script(Scripted(chunk_delay_s=5))                    # headers at once, no token
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        stream = await gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Fake reply to: hello"
    assert len(two.requests) == 1
    await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)


async def test_total_timeout_bounds_a_plain_request(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 1",
                                        provider_extra="    timeout_s: 0.3")).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    one.script(Scripted(delay_s=5))
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.chat()
        assert caught.value.status_code == 504
        assert orjson.loads(caught.value.response.content)["error"]["type"] == "timeout_error"
        await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)
    # The 0.3 s spent waiting on the upstream is upstream time, not TruckLLM's overhead.
    assert float(caught.value.response.headers["x-truckllm-overhead-ms"]) < 250


async def test_total_timeout_ends_a_flowing_stream_cleanly(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, provider_extra="    timeout_s: 0.5\n    idle_timeout_s: 5")
    one.script(Scripted(chunk_delay_s=0.05, text=" ".join(["word"] * 60)))   # never idle, 3 s long
    async with make_gateway(config, health_clock=FakeClock()) as gw:
        body = await gw.raw_stream()
        await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["type"] == "timeout_error"
    assert b"word" in body and not two.requests              # no retry after the first byte


# -- routing state across a real reload ----------------------------------------------------


def file_config(one: str, two: str, strategy: str, cooldown_s: int = 30) -> str:
    return two_providers(one, two, alias_extra=f"    strategy: {strategy}",
                         routing="").replace(
        "version: 1\n", f"version: 1\nserver: {{admin_api_key: {ADMIN}, watch: false}}\n").replace(
        "cooldown_s: 30", f"cooldown_s: {cooldown_s}")


async def test_round_robin_cursor_survives_a_reload(fakes: tuple[OpenAIFake, OpenAIFake],
                                                     tmp_path: Path) -> None:
    one, two = fakes
    path = tmp_path / "config.yaml"
    path.write_text(file_config(one.url, two.url, "round_robin"))
    async with make_gateway(path.read_text(), tmp_path) as gw:
        await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
        path.write_text(file_config(one.url, two.url, "round_robin", cooldown_s=31))
        await gw.reload(ADMIN)
        await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    # The cursor carried on: the second request went to the other target, not back to p1.
    assert (len(one.requests), len(two.requests)) == (1, 1)


async def test_latency_estimates_survive_a_reload(fakes: tuple[OpenAIFake, OpenAIFake],
                                                  tmp_path: Path) -> None:
    one, two = fakes
    path = tmp_path / "config.yaml"
    path.write_text(file_config(one.url, two.url, "lowest_latency"))
    one.script(Scripted(delay_s=0.3))                        # p1 is measured slow
    async with make_gateway(path.read_text(), tmp_path) as gw:
        for _ in range(2):                                   # each target measured once
            await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
        path.write_text(file_config(one.url, two.url, "lowest_latency", cooldown_s=31))
        await gw.reload(ADMIN)
        for _ in range(4):
            await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert (len(one.requests), len(two.requests)) == (1, 5)


# -- absurd upstream values ----------------------------------------------------------------


async def test_absurd_retry_after_is_capped_and_the_admin_api_still_answers(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace(
        "version: 1\n", f"version: 1\nserver: {{admin_api_key: {ADMIN}}}\n")
    one.script(Scripted(status=429, headers={"Retry-After": "1e300"}))
    async with make_gateway(config, health_clock=FakeClock()) as gw:
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


# -- an upstream echoing our key -----------------------------------------------------------

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
    async with make_gateway(hex_key_config(one.url, two.url), health_clock=FakeClock()) as gw:
        status, _, raw = await gw.raw_chat()
        assert gw.routing.health.key_health("p1/k1").last_error == "internal: key *** broke"
    assert status == 502 and HEX_KEY not in raw.decode()
    assert orjson.loads(raw)["error"]["message"] == "internal: key *** broke"


async def test_an_error_event_mid_stream_never_shows_our_key(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    first = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m1",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}
    error = {"error": {"message": f"key {HEX_KEY} over quota, also sk-proj-abcdefghijkl",
                       "type": "server_error", "param": None, "code": None}}
    one.script(Scripted(chunks=[first, error], done=False))
    async with make_gateway(hex_key_config(one.url, two.url), health_clock=FakeClock()) as gw:
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
    async with make_gateway(two_providers(one.url, two.url), health_clock=FakeClock()) as gw:
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
    async with make_gateway(hex_key_config(one.url, two.url), health_clock=FakeClock()) as gw:
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
    async with make_gateway(config, health_clock=FakeClock()) as gw:
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
