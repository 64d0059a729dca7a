"""Several real `truckllm serve` processes sharing one real redis-server: one limit for all
of them, exactly; one health of an upstream key (a breaker opened by failures on both, its
one half-open trial, a cooldown); an outage of Redis drops no request, shows in /metrics
and the status, and the spend counted meanwhile reaches Redis when it is back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fakes.openai_fake import Scripted, make_openai_fake
from tests.harness import SERVE_ENV, ServeProcess, free_port, run_serve_process, wait_until
from tests.redis_server import RedisServer
from truckllm.runtime.config_sync import CHANNEL

pytestmark = pytest.mark.slow     # mostly waits: runs first (tests/conftest.py)

KEY = SERVE_ENV["TEAM_KEY"]


def config(port: int, state_url: str, *, rpm: int | None = None,
           gateway_rpm: int | None = None, budget: float | None = None) -> str:
    limits = []
    if rpm is not None:
        limits.append(f"rpm: {rpm}")
    if budget is not None:
        limits.append(f"budget_usd: {budget}")
    key_line = "  - {id: team-a, key: \"${TEAM_KEY}\"" + "".join(f", {x}" for x in limits) + "}"
    return "\n".join([
        "version: 1",
        "server:",
        f"  port: {port}",
        "  watch: false",
        "  admin_api_key: ${ADMIN_KEY}",
        f"  state_url: {state_url}",
        "providers:",
        "  - id: demo",
        "    type: mock",
        "    keys: [{id: k1, value: \"${MOCK_KEY}\"}]",
        "models:",
        "  - alias: demo",
        "    targets: [{provider: demo, model: echo}]",
        "    pricing: {input_per_mtok: 1000000, output_per_mtok: 1000000}",
        "keys:",
        key_line,
        *([f"limits: {{rpm: {gateway_rpm}}}"] if gateway_rpm is not None else []),
        "",
    ])


@asynccontextmanager
async def instances(tmp_path: Path, count: int, state_url: str,
                    **limits: float | None) -> AsyncIterator[list[ServeProcess]]:
    async with AsyncExitStack() as stack:
        starting = []
        # Started side by side: each waits for its own process to answer.
        async with asyncio.TaskGroup() as group:
            for index in range(count):
                home = tmp_path / f"instance{index}"
                home.mkdir()
                port = free_port()
                path = home / "truckllm.yaml"
                path.write_text(config(port, state_url, **limits))  # type: ignore[arg-type]
                starting.append(group.create_task(
                    stack.enter_async_context(run_serve_process(path, port))))
        yield [task.result() for task in starting]


async def chat(http: aiohttp.ClientSession, gateway: ServeProcess) -> int:
    async with http.post(gateway.root + "/v1/chat/completions",
                         headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "demo",
                               "messages": [{"role": "user", "content": "hello"}]}) as response:
        await response.read()
        return response.status


async def spread(gateways: list[ServeProcess], clients: int, per_client: int) -> list[int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def client(index: int) -> list[int]:
            return [await chat(http, gateways[(index + n) % len(gateways)])
                    for n in range(per_client)]
        results = await asyncio.gather(*(client(i) for i in range(clients)))
    return [status for statuses in results for status in statuses]


async def team_report(gateway: ServeProcess) -> dict[str, Any]:
    code, body, text = await gateway.admin("GET", "/admin/v1/keys")
    assert code == 200, text
    found: dict[str, Any] = next(key for key in body["keys"] if key["id"] == "team-a")
    return found


async def metric(gateway: ServeProcess, name: str) -> float:
    _, text = await gateway.get("/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


@pytest.mark.parametrize("limit", ["key", "gateway"])
async def test_64_clients_over_3_instances_get_exactly_rpm(
        tmp_path: Path, redis_url: str, limit: str) -> None:
    rpm = 50
    limits = {"rpm": rpm} if limit == "key" else {"gateway_rpm": rpm}
    async with instances(tmp_path, 3, redis_url, **limits) as gateways:
        statuses = await spread(gateways, clients=64, per_client=2)
        assert statuses.count(200) == rpm
        assert statuses.count(429) == 128 - rpm
        if limit == "key":
            assert (await team_report(gateways[2]))["requests"] == rpm


async def test_a_budget_is_crossed_by_at_most_the_requests_in_flight(
        tmp_path: Path, redis_url: str) -> None:
    async with instances(tmp_path, 3, redis_url, budget=0.0005) as gateways:
        statuses = await spread(gateways, clients=64, per_client=2)
        served = statuses.count(200)
        assert 1 <= served <= 64         # once spent, only requests already admitted got through
        assert statuses.count(403) == 128 - served
        body = await team_report(gateways[0])
        assert body["requests"] == served
        assert body["spend_usd"] >= 0.0005


@pytest.mark.slow(seconds=3)
async def test_redis_outage_drops_no_request_and_spend_reaches_it_after(tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    try:
        async with instances(tmp_path, 2, server.url, rpm=1000) as gateways:
            assert (await spread(gateways, clients=4, per_client=2)).count(200) == 8
            server.stop()
            assert (await spread(gateways, clients=4, per_client=2)).count(200) == 8
            assert await metric(gateways[0], "truckllm_state_backend_up") == 0
            status = await gateways[0].status()
            assert status["state_backend"]["up"] is False
            log = gateways[0].output()
            assert log.count("state_backend_down") == 1
            server.start()          # empty: it gets what was counted during the outage

            async def pushed() -> bool:
                return bool((await team_report(gateways[1]))["lifetime"]["requests"] >= 8)
            await wait_until(pushed, "the outage's usage to reach Redis")

            # An instance marks Redis up once all its pushes are done: the usage can be
            # seen a moment before the gauge turns.
            async def back_up() -> bool:
                return await metric(gateways[0], "truckllm_state_backend_up") == 1
            await wait_until(back_up, "instance 0 to report Redis up again")
            body = await team_report(gateways[1])
            assert body["lifetime"]["requests"] == 8
            assert body["lifetime"]["spend_usd"] > 0
    finally:
        server.stop()


@pytest.mark.slow(seconds=3)
async def test_the_state_files_spend_is_imported_once(tmp_path: Path, redis_url: str) -> None:
    state = {"version": 1, "client_keys": {"team-a": {
        "period_start": "1970-01-01T00:00:00+00:00",
        "period": {"requests": 7, "prompt_tokens": 70, "completion_tokens": 7, "spend_usd": 1.5},
        "lifetime": {"requests": 7, "prompt_tokens": 70, "completion_tokens": 7,
                     "spend_usd": 1.5}}}, "upstream_keys": {}}
    for round_ in range(2):         # the second start finds the same file: nothing added
        home = tmp_path / f"start{round_}"
        home.mkdir()
        (home / "truckllm.state.json").write_text(json.dumps(state))
        port = free_port()
        path = home / "truckllm.yaml"
        path.write_text(config(port, redis_url, budget=100.0))
        async with run_serve_process(path, port) as gateway:
            async def imported() -> bool:
                return bool((await team_report(gateway))["spend_usd"] == 1.5)
            await wait_until(imported, "the state file's spend in Redis")
            report = await team_report(gateway)
            assert report["requests"] == 7


async def test_an_admin_change_on_one_instance_reaches_the_other(
        tmp_path: Path, redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        starting = []
        async with asyncio.TaskGroup() as group:
            for index, env in enumerate(({"ONLY_ON_A": "mock-a-5c1e-secret"}, {})):
                home = tmp_path / f"instance{index}"
                home.mkdir()
                port = free_port()
                path = home / "truckllm.yaml"
                path.write_text(config(port, redis_url))
                starting.append(group.create_task(
                    stack.enter_async_context(run_serve_process(path, port, env=env))))
        a, b = (task.result() for task in starting)
        await wait_until(lambda: listeners(redis_url, 2), "both instances to listen for changes")

        changed = a.config_path.read_text().replace(
            "models:\n", "models:\n  - alias: added\n    targets: [{provider: demo, model: echo}]\n")
        code, _, text = await a.admin("POST", "/admin/v1/config", data=changed.encode())
        assert code == 200, text

        async def b_follows() -> bool:
            return "added" in b.config_path.read_text() and \
                (await b.status())["config"]["sha256"] == (await a.status())["config"]["sha256"]
        await wait_until(b_follows, "instance b to write and apply the change")
        _, metrics_b = await b.get("/metrics")
        assert f'sha256="{(await a.status())["config"]["sha256"]}"' in metrics_b

        # a client key created, then revoked, through a's keys API: b follows both
        code, _, text = await a.admin("POST", "/admin/v1/keys", data=b'{"id": "ci-bot"}')
        assert code in (200, 201), text

        async def b_has_key() -> bool:
            return "ci-bot" in b.config_path.read_text() and any(
                key["id"] == "ci-bot" for key in (await b.admin("GET", "/admin/v1/keys"))[1]["keys"])
        await wait_until(b_has_key, "instance b to have the key created on a")
        code, _, text = await a.admin("DELETE", "/admin/v1/keys/ci-bot")
        assert code == 200, text

        async def b_revoked() -> bool:      # written and applied: b runs a's config again
            return "ci-bot" not in b.config_path.read_text() and \
                (await b.status())["config"]["sha256"] == (await a.status())["config"]["sha256"]
        await wait_until(b_revoked, "instance b to drop the key revoked on a")

        # one b cannot apply (a variable only a has): b keeps its config and says why
        before = (await b.status())["config"]["sha256"]
        broken = changed.replace('value: "${MOCK_KEY}"', 'value: "${ONLY_ON_A}"')
        code, _, text = await a.admin("POST", "/admin/v1/config", data=broken.encode())
        assert code == 200, text

        async def b_refused() -> bool:
            sync = (await b.status())["state_backend"]["config_sync"]["last_received"]
            return sync is not None and sync["result"] == "kept own config"
        await wait_until(b_refused, "instance b to refuse the change")
        status = await b.status()
        assert status["config"]["sha256"] == before
        assert "ONLY_ON_A" in str(status["state_backend"]["config_sync"]["last_received"]["errors"])
        assert "config_change_refused" in b.output()
        assert "mock-a-5c1e-secret" not in b.output() + b.config_path.read_text()


async def listeners(redis_url: str, count: int) -> bool:
    client = aioredis.Redis.from_url(redis_url)
    try:
        [(_, subscribed)] = await client.pubsub_numsub(CHANNEL)
        return bool(subscribed >= count)
    finally:
        await client.aclose()


async def test_closed_on_failure_answers_503_in_the_error_shape(tmp_path: Path) -> None:
    server = RedisServer()          # never started: unreachable from the first request
    port = free_port()
    path = tmp_path / "truckllm.yaml"
    path.write_text(config(port, server.url, rpm=100).replace(
        f"  state_url: {server.url}", f"  state_url: {server.url}\n  state_failure: closed"))
    async with run_serve_process(path, port) as gateway, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(gateway.root + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
                      ) as response:
        body = await response.json()
        assert response.status == 503
        assert body["error"]["type"] == "overloaded_error"
        assert response.headers["Retry-After"] == "1"
        assert (await gateway.status())["state_backend"]["up"] is False


async def test_a_response_stored_by_one_instance_is_found_by_the_other(
        tmp_path: Path, redis_url: str) -> None:
    async with instances(tmp_path, 2, redis_url) as (a, b), \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                  headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(a.root + "/v1/responses",
                             json={"model": "demo", "input": "remember this"}) as reply:
            first = await reply.json()
            assert reply.status == 200, first
        async with http.post(b.root + "/v1/responses",
                             json={"model": "demo", "input": "and now?",
                                   "previous_response_id": first["id"]}) as reply:
            assert reply.status == 200, await reply.text()
        async with http.get(f"{b.root}/v1/responses/{first['id']}") as reply:
            assert reply.status == 200 and (await reply.json())["id"] == first["id"]
        async with http.delete(f"{b.root}/v1/responses/{first['id']}") as reply:
            assert reply.status == 200, await reply.text()
        async with http.get(f"{a.root}/v1/responses/{first['id']}") as reply:
            assert reply.status == 404


def openai_config(port: int, state_url: str, upstream_url: str) -> str:
    """One upstream key behind one target, each request one attempt: every failure an
    instance sees is one failure of the key and of the target."""
    return "\n".join([
        "version: 1",
        "server:",
        f"  port: {port}",
        "  watch: false",
        "  admin_api_key: ${ADMIN_KEY}",
        f"  state_url: {state_url}",
        "providers:",
        "  - id: openai",
        "    type: openai",
        f"    base_url: {upstream_url}",
        "    keys: [{id: main, value: \"${OPENAI_KEY}\"}]",
        "models:",
        "  - alias: gpt",
        "    targets: [{provider: openai, model: gpt-4o-mini}]",
        "routing: {max_attempts: 1, cooldown_s: 3, breaker_failures: 3, breaker_window_s: 60}",
        "keys:",
        "  - {id: team-a, key: \"${TEAM_KEY}\"}",
        "",
    ])


@asynccontextmanager
async def upstream_pair(tmp_path: Path, state_url: str,
                        upstream_url: str) -> AsyncIterator[list[ServeProcess]]:
    async with AsyncExitStack() as stack:
        gateways = []
        for index in range(2):
            home = tmp_path / f"instance{index}"
            home.mkdir()
            port = free_port()
            path = home / "truckllm.yaml"
            path.write_text(openai_config(port, state_url, upstream_url))
            gateways.append(await stack.enter_async_context(run_serve_process(path, port)))
        yield gateways


async def ask(gateway: ServeProcess) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
            http.post(gateway.root + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "gpt",
                            "messages": [{"role": "user", "content": "hello"}]}) as response:
        await response.read()
        return response.status


async def key_status(gateway: ServeProcess) -> dict[str, Any]:
    code, body, text = await gateway.admin("GET", "/admin/v1/providers")
    assert code == 200, text
    provider = next(p for p in body["providers"] if p["id"] == "openai")
    found: dict[str, Any] = provider["keys"][0]
    return found


@pytest.mark.slow(seconds=6)
async def test_a_breaker_is_opened_by_failures_on_both_and_one_instance_takes_the_trial(
        tmp_path: Path, redis_url: str) -> None:
    async with make_openai_fake() as fake, \
            upstream_pair(tmp_path, redis_url, fake.url) as (a, b):
        sent = len(fake.requests)
        fake.script(*(Scripted(status=500, body={"error": {"message": "down"}})
                      for _ in range(3)))
        for gateway in (a, b, a):           # 2 failures on a, 1 on b: 3 counted once
            assert await ask(gateway) >= 500
        assert len(fake.requests) == sent + 3

        async def b_sees_it_open() -> bool:
            return (await key_status(b))["status"] == "down"
        await wait_until(b_sees_it_open, "instance b to see the breaker opened on a")
        assert await ask(b) == 503 and await ask(a) == 503
        assert len(fake.requests) == sent + 3  # neither sent anything while it was open

        async def half_open() -> bool:
            return all([(await key_status(g))["status"] == "degraded" for g in (a, b)])
        await wait_until(half_open, "the breaker to half-open on both")
        fake.script(Scripted(delay_s=0.5))     # the trial is still running when both ask
        statuses = await asyncio.gather(ask(a), ask(b))
        assert sorted(statuses) == [200, 503]
        assert len(fake.requests) == sent + 4  # exactly one trial reached the upstream

        async def closed_on_both() -> bool:
            return all([(await key_status(g))["status"] == "healthy" for g in (a, b)])
        await wait_until(closed_on_both, "the trial's success to close the breaker on both")
        assert await ask(b) == 200 and await ask(a) == 200


async def test_a_429_on_one_instance_cools_the_key_on_the_other(
        tmp_path: Path, redis_url: str) -> None:
    async with make_openai_fake() as fake, \
            upstream_pair(tmp_path, redis_url, fake.url) as (a, b):
        assert await ask(b) == 200
        sent = len(fake.requests)
        fake.script(Scripted(status=429, headers={"Retry-After": "30"},
                             body={"error": {"message": "slow down"}}))
        assert await ask(a) != 200
        assert len(fake.requests) == sent + 1

        async def b_sees_it_cool() -> bool:
            return (await key_status(b))["cooldown_until"] is not None
        await wait_until(b_sees_it_cool, "instance b to see the cooldown set on a", limit_s=3)
        assert await ask(b) != 200
        assert len(fake.requests) == sent + 1   # b did not send to the cooling key
