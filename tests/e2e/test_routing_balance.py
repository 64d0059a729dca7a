"""How requests spread, end to end: distributions over a few hundred requests per strategy
and weight, key rotation when an alias has several targets on one provider, and the
round-robin cursor and latency estimates kept across a real reload (POST /admin/v1/reload)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import (
    MESSAGES,
    Gateway,
    keys_used,
    make_gateway,
    two_providers,
)
from truckllm.clock import ManualClock

ADMIN = "admin-secret-routing"
BATCH = 20


async def many_chats(gw: Gateway, count: int, model: str = "chat") -> None:
    """`count` requests, BATCH at a time, as concurrent clients would send them. Plain
    HTTP rather than an SDK: where the requests go is what counts here, and hundreds of
    SDK calls cost more CPU than the gateway and the fakes together."""
    async def chat(http: aiohttp.ClientSession) -> None:
        async with http.post("/v1/chat/completions",
                             json={"model": model, "messages": MESSAGES}) as response:
            assert response.status == 200, await response.text()
            await response.read()
    async with gw.http() as http:
        for start in range(0, count, BATCH):
            await asyncio.gather(*(chat(http) for _ in range(min(BATCH, count - start))))


def models_used(*fakes: OpenAIFake) -> Counter[str]:
    return Counter(r.body["model"] for fake in fakes for r in fake.requests)


async def test_round_robin_spreads_evenly_over_hundreds_of_requests(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: round_robin")
    async with make_gateway(config, clock=ManualClock()) as gw:
        await many_chats(gw, 300)
    assert (len(one.requests), len(two.requests)) == (150, 150)


async def test_weighted_targets_follow_their_weights_over_hundreds_of_requests(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, alias_extra="    strategy: weighted").replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1, weight: 3}, {provider: p2, model: m2, weight: 1}]")
    async with make_gateway(config, clock=ManualClock()) as gw:
        await many_chats(gw, 400)
    # Smooth weighted round robin is exact over any whole cycle; allow 5 % for the batches.
    assert abs(len(one.requests) - 300) <= 20 and len(one.requests) + len(two.requests) == 400


async def test_key_weights_hold_over_hundreds_of_requests(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace("value: sk-one}", "value: sk-one, weight: 2}")
    async with make_gateway(config, clock=ManualClock()) as gw:
        await many_chats(gw, 300)
    used = Counter(keys_used(one))
    assert abs(used["sk-one"] - 200) <= 15 and used["sk-one"] + used["sk-two"] == 300


async def test_zero_weight_key_only_serves_when_the_others_cannot(
        fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url).replace("value: sk-two}", "value: sk-two, weight: 0}")
    async with make_gateway(config, clock=ManualClock()) as gw:
        await many_chats(gw, 40)
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
    async with make_gateway(config, clock=ManualClock()) as gw:
        for _ in range(10):
            await gw.chat()
    assert models_used(one) == {"m1": 10}
    assert Counter(keys_used(one)) == {"sk-one": 5, "sk-two": 5}


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
    async with make_gateway(path.read_text(), directory=tmp_path) as gw:
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
    async with make_gateway(path.read_text(), directory=tmp_path) as gw:
        for _ in range(2):                                   # each target measured once
            await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
        path.write_text(file_config(one.url, two.url, "lowest_latency", cooldown_s=31))
        await gw.reload(ADMIN)
        for _ in range(4):
            await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert (len(one.requests), len(two.requests)) == (1, 5)
