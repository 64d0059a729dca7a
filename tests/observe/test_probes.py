"""Active health checks: free `GET /models` probes against fake upstreams, their effect
on health, the background loop owned by the app, and the admin report."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest

from tests.fakes.azure_fake import make_azure_fake
from tests.fakes.failing_upstream import make_fixed_upstream
from tests.fakes.openai_fake import make_openai_fake
from tests.harness import make_gateway
from truckllm.clock import ManualClock
from truckllm.config.loader import load_bytes
from truckllm.observe.probes import probe_due
from truckllm.pipeline.health import Health
from truckllm.pipeline.retry import ErrorClass, Outcome
from truckllm.pipeline.transport import Transport
from truckllm.runtime.state import State, build_state


def make_state(url: str, interval: str = "health_check_interval_s: 60") -> State:
    config = f"""
version: 1
providers:
  - id: up
    type: openai
    base_url: {url}
    {interval}
    keys: [{{id: a, value: sk-aaa}}, {{id: b, value: sk-bbb}}]
  - id: demo
    type: mock
    health_check_interval_s: 1
models:
  - alias: chat
    targets: [{{provider: up, model: m}}, {{provider: demo, model: d}}]
"""
    return build_state(load_bytes(config.encode(), "t.yaml", {}), 1)


async def test_probes_use_the_free_models_endpoint_with_each_key() -> None:
    async with make_openai_fake() as fake:
        transport = Transport()
        health = Health()
        last: dict[str, float] = {}
        try:
            assert await probe_due(make_state(fake.url), transport, health, last, now=100.0) == 2
            assert await probe_due(make_state(fake.url), transport, health, last, now=130.0) == 0
            assert await probe_due(make_state(fake.url), transport, health, last, now=161.0) == 2
        finally:
            await transport.close()
    assert {(r.method, r.path) for r in fake.requests} == {("GET", "/v1/models")}
    assert sorted(r.headers["authorization"] for r in fake.requests[:2]) == ["Bearer sk-aaa", "Bearer sk-bbb"]
    assert health.key_health("up/a").status == "healthy"


async def test_a_rejected_probe_disables_the_key() -> None:
    async with make_fixed_upstream(401) as upstream:
        transport = Transport()
        health = Health()
        try:
            await probe_due(make_state(upstream.url), transport, health, {}, now=0.0)
        finally:
            await transport.close()
    assert len(upstream.seen) == 2
    assert health.key_health("up/a").disabled and health.key_health("up/b").disabled
    report = health.provider_report("up", "openai", ["a", "b"])
    assert report["status"] == "down"
    assert [key["status"] for key in report["keys"]] == ["down", "down"]


async def test_failing_probes_open_the_key_breaker_and_a_good_one_closes_it() -> None:
    transport = Transport()
    health = Health()
    state = make_state("http://127.0.0.1:9/v1")        # discard port: connection refused
    try:
        for round_ in range(3):
            await probe_due(state, transport, health, {}, now=float(round_))
    finally:
        await transport.close()
    assert not health.key_available("up/a")
    assert health.key_health("up/a").cooldown_until is not None
    health.record_probe("up/a", None)
    assert health.key_available("up/a")


async def test_providers_without_interval_or_free_endpoint_are_not_probed() -> None:
    async with make_openai_fake() as fake:
        transport = Transport()
        try:
            state = make_state(fake.url, interval="")
            assert await probe_due(state, transport, Health(), {}, now=math.inf) == 0
        finally:
            await transport.close()
    assert not fake.requests


async def test_the_app_runs_probes_in_the_background() -> None:
    async with make_openai_fake() as fake:
        config = f"""
version: 1
providers:
  - id: up
    type: openai
    base_url: {fake.url}
    health_check_interval_s: 30
    keys: [{{id: a, value: sk-aaa}}]
models:
  - alias: chat
    targets: [{{provider: up, model: m}}]
"""
        async with make_gateway(config):
            async with asyncio.timeout(5):
                while not fake.requests:
                    await asyncio.sleep(0.01)
        assert (fake.requests[0].method, fake.requests[0].path) == ("GET", "/v1/models")


def test_provider_report_shape() -> None:
    health = Health(clock=ManualClock(datetime.fromtimestamp(1_800_000_000.0, UTC)))
    attempt = health.begin(("up", "m"), "up/a")
    attempt.failed(Outcome(ErrorClass.RATE_LIMITED, "slow down", 429, 30))
    attempt.end()
    report = health.provider_report("up", "openai", ["a", "b"])
    never = {"spend_usd": 0.0, "lifetime": {"requests": 0, "tokens": 0, "spend_usd": 0.0}}
    assert report == {
        "id": "up", "type": "openai", "status": "degraded",
        "keys": [
            {"id": "a", "status": "down", "usage_req": 1, "usage_tokens": 0, "errors": 1,
             "cooldown_until": "2027-01-15T08:00:30Z", "last_error": "429", **never},
            {"id": "b", "status": "healthy", "usage_req": 0, "usage_tokens": 0, "errors": 0,
             "cooldown_until": None, "last_error": None, **never},
        ],
    }


@pytest.mark.parametrize(("provider_type", "key_header", "extra"), [
    ("anthropic", "x-api-key", ("anthropic-version", "2023-06-01")),
    ("gemini", "x-goog-api-key", None),
])
async def test_anthropic_and_gemini_probe_their_free_models_endpoint(
        provider_type: str, key_header: str, extra: tuple[str, str] | None) -> None:
    async with make_fixed_upstream(200) as upstream:
        config = f"""
version: 1
providers:
  - id: up
    type: {provider_type}
    base_url: {upstream.url}
    health_check_interval_s: 60
    keys: [{{id: a, value: secret-aaa}}]
models:
  - alias: chat
    targets: [{{provider: up, model: m}}]
"""
        state = build_state(load_bytes(config.encode(), "t.yaml", {}), 1)
        transport = Transport()
        try:
            assert await probe_due(state, transport, Health(), {}, now=0.0) == 1
        finally:
            await transport.close()
    [(method, path, headers)] = upstream.seen
    assert (method, path, headers[key_header]) == ("GET", "/v1/models", "secret-aaa")
    if extra:
        assert headers[extra[0]] == extra[1]


@pytest.mark.parametrize(("path_suffix", "expected_path", "expected_query"), [
    ("", "/openai/models", {"api-version": "2024-06-01"}),
    ("/openai/v1", "/openai/v1/models", {}),
])
async def test_azure_probes_its_free_model_listing(path_suffix: str, expected_path: str,
                                                   expected_query: dict[str, str]) -> None:
    async with make_azure_fake() as fake:
        config = f"""
version: 1
providers:
  - id: az
    type: azure
    base_url: {fake.url}{path_suffix}
    api_version: "2024-06-01"
    health_check_interval_s: 60
    keys: [{{id: good, value: {fake.valid_key}}}, {{id: bad, value: wrong-key}}]
models:
  - alias: chat
    targets: [{{provider: az, model: my-deployment}}]
"""
        state = build_state(load_bytes(config.encode(), "t.yaml", {}), 1)
        transport = Transport()
        health = Health()
        try:
            assert await probe_due(state, transport, health, {}, now=0.0) == 2
        finally:
            await transport.close()
    assert {(r.method, r.path) for r in fake.requests} == {("GET", expected_path)}
    assert all(dict(r.query) == expected_query and r.body is None for r in fake.requests)
    assert health.key_health("az/good").status == "healthy"
    assert health.key_health("az/bad").disabled        # the listing said 401: key rejected
