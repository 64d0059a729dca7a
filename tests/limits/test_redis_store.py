"""The Redis client and upstream stores against a real redis-server: several stores (as
several instances would) share one limit exactly, slots of a dead instance expire, an
outage falls back to local limits and its usage reaches Redis when it is back."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.ports import free_port
from tests.redis_server import RedisServer, redis_server_binary
from truckllm.clock import SystemClock
from truckllm.errors import Overloaded
from truckllm.limits import NO_PROMPT, KeyPolicy, Limiter, LimitsPolicy, RateLimits
from truckllm.limits.accounts import Account, Counters
from truckllm.limits.clients import Grant, Refused
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.meter import Refusal
from truckllm.limits.redis_clients import RedisClientStore
from truckllm.limits.redis_link import CALL_TIMEOUT_S, StateLink
from truckllm.limits.redis_upstream import RedisUpstreamStore
from truckllm.limits.upstream import HealthSettings
from truckllm.pipeline.health import Health
from truckllm.pipeline.retry import ErrorClass, Outcome
from truckllm.usage import Usage

TOTAL = datetime(1970, 1, 1, tzinfo=UTC)
OPEN = RateLimits()


@pytest.fixture
async def links(redis_url: str) -> AsyncIterator[list[StateLink]]:
    made = [StateLink(redis_url) for _ in range(3)]
    yield made
    for link in made:
        await link.close()


async def test_three_instances_admit_exactly_rpm(links: list[StateLink]) -> None:
    stores = [RedisClientStore(link, SystemClock()) for link in links]
    key = KeyPolicy("team", RateLimits(rpm=25))
    results = await asyncio.gather(*(
        stores[i % 3].admit(OPEN, key, PromptEstimate.known(10), TOTAL) for i in range(64)))
    assert sum(isinstance(r, Grant) for r in results) == 25
    refused = [r for r in results if isinstance(r, Refused)]
    assert all(r.refusal is not None and r.refusal.limit == "rpm" for r in refused)
    assert (await stores[1].account("team", TOTAL)).period.requests == 25


async def test_budget_shared_and_crossed_by_at_most_the_requests_in_flight(
        links: list[StateLink]) -> None:
    stores = [RedisClientStore(link, SystemClock()) for link in links]
    key = KeyPolicy("team", budget_usd=1.0)
    spent = 0
    for _ in range(10):
        results = await asyncio.gather(*(
            store.admit(OPEN, key, PromptEstimate.known(0), TOTAL) for store in stores))
        grants = [(s, r) for s, r in zip(stores, results, strict=True) if isinstance(r, Grant)]
        await asyncio.gather(*(s.finish(g, Usage(1, 1), 0.25, TOTAL) for s, g in grants))
        spent += len(grants)
    # admitted while under budget: at most one round of 3 in flight crosses it
    assert 4 <= spent <= 6
    assert (await stores[0].account("team", TOTAL)).period.spend_usd == spent * 0.25


async def test_global_concurrency_and_a_dead_instances_slots_expire(
        links: list[StateLink]) -> None:
    short = [RedisClientStore(link, SystemClock(), lease_s=0.5) for link in links[:2]]
    gateway = RateLimits(max_concurrent=2)
    held = [await short[0].admit(gateway, None, PromptEstimate.known(0), TOTAL) for _ in range(2)]
    assert all(isinstance(g, Grant) for g in held)
    refused = await short[1].admit(gateway, None, PromptEstimate.known(0), TOTAL)
    assert isinstance(refused, Refused) and refused.refusal is not None
    assert refused.refusal.limit == "max_concurrent"
    await asyncio.sleep(0.7)        # instance 0 "died": never renewed, never released
    assert isinstance(await short[1].admit(gateway, None, PromptEstimate.known(0), TOTAL), Grant)


async def test_tpm_reconciles_with_real_usage_across_instances(links: list[StateLink]) -> None:
    a, b = (RedisClientStore(link, SystemClock()) for link in links[:2])
    key = KeyPolicy("team", RateLimits(tpm=1000))
    grant = await a.admit(OPEN, key, PromptEstimate.known(900), TOTAL)
    assert isinstance(grant, Grant)
    assert isinstance(await b.admit(OPEN, key, PromptEstimate.known(200), TOTAL), Refused)
    await a.finish(grant, Usage(prompt_tokens=50, completion_tokens=50), 0.0, TOTAL)
    assert isinstance(await b.admit(OPEN, key, PromptEstimate.known(200), TOTAL), Grant)
    assert (await b.current("team"))[1] == 300


async def test_upstream_acquire_refuses_when_another_instance_took_the_minute(
        links: list[StateLink]) -> None:
    a, b = (RedisUpstreamStore(link) for link in links[:2])
    rates = RateLimits(rpm=2)
    for store in (a, b):
        assert not isinstance(await store.acquire("p/k", rates, PromptEstimate.known(0)), Refusal)
    assert b.refusal("p/k", rates, PromptEstimate.known(0)) is None     # b has not seen it
    refused = await b.acquire("p/k", rates, PromptEstimate.known(0))
    assert isinstance(refused, Refusal) and refused.limit == "rpm"
    assert b.refusal("p/k", rates, PromptEstimate.known(0)) is not None  # now it has


async def test_two_pushes_at_once_add_queued_usage_once(links: list[StateLink]) -> None:
    store = RedisClientStore(links[0], SystemClock())
    queued = Account(TOTAL)
    queued.period.add(Counters(3, 30, 3, 0.5))
    queued.lifetime.add(Counters(3, 30, 3, 0.5))
    store.restore({"team": queued})
    await asyncio.gather(store.push(), store.push())
    account = await RedisClientStore(links[1], SystemClock()).account("team", TOTAL)
    assert (account.period.requests, account.period.spend_usd) == (3, 0.5)


async def test_an_outage_falls_back_and_its_spend_reaches_redis() -> None:
    server = RedisServer()
    server.start()
    link = StateLink(server.url)
    try:
        store = RedisClientStore(link, SystemClock())
        key = KeyPolicy("team", RateLimits(rpm=100), budget_usd=10.0)
        grant = await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL)
        assert isinstance(grant, Grant)
        await store.finish(grant, Usage(1, 1), 1.0, TOTAL)
        await link.flushed()        # the end of a request is sent after it, not waited for
        server.stop()
        grant = await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL)   # served
        assert isinstance(grant, Grant) and not link.up
        await store.finish(grant, Usage(2, 2), 2.0, TOTAL)
        server.start()              # empty again: what it holds now is what is pushed
        await link._probe()
        assert link.up
        other = StateLink(server.url)
        try:
            account = await RedisClientStore(other, SystemClock()).account("team", TOTAL)
        finally:
            await other.close()
        assert (account.lifetime.requests, account.lifetime.spend_usd) == (1, 2.0)
    finally:
        await link.close()
        server.stop()


async def test_closed_on_failure_refuses_keys_with_limits() -> None:
    server = RedisServer()          # never started: unreachable
    link = StateLink(server.url, "closed")
    try:
        store = RedisClientStore(link, SystemClock())
        with pytest.raises(Overloaded):
            await store.admit(OPEN, KeyPolicy("team", RateLimits(rpm=5)),
                              PromptEstimate.known(0), TOTAL)
        assert isinstance(await store.admit(OPEN, KeyPolicy("free"), PromptEstimate.known(0),
                                            TOTAL), Grant)
    finally:
        await link.close()


async def test_cooldowns_disabled_keys_and_open_breakers_reach_the_other_instances(
        links: list[StateLink]) -> None:
    a, b = (RedisUpstreamStore(link) for link in links[:2])
    health_a, health_b = Health(store=a), Health(store=b)
    target = ("p", "model")
    attempt = health_a.begin(target, "p/cool")
    attempt.failed(Outcome(ErrorClass.RATE_LIMITED, "429", 429, retry_after_s=30))
    attempt.end()
    attempt = health_a.begin(target, "p/bad")
    attempt.failed(Outcome(ErrorClass.AUTH, "401", 401))
    attempt.end()
    for _ in range(3):
        attempt = health_a.begin(target, "p/k")
        attempt.failed(Outcome(ErrorClass.SERVER, "500", 500))
        attempt.end()
    assert not health_a.target_available(target)
    assert health_b.key_available("p/cool") and health_b.target_available(target)
    await a.link.flushed()
    await b.refresh_health()
    assert not health_b.key_available("p/cool")
    wait = health_b.seconds_until_available(("q", "m"), "p/cool")
    assert wait is not None and 28 < wait <= 30
    assert not health_b.key_available("p/bad")
    assert not health_b.target_available(target)
    health_a.prune(["p/cool", "p/bad", "p/k"], ["p"])      # a reload re-enables the rejected key
    await a.link.flushed()
    health_b.prune(["p/cool", "p/bad", "p/k"], ["p"])      # and on b
    await b.link.flushed()
    await b.refresh_health()
    assert health_b.key_available("p/bad")


async def test_the_end_of_a_request_counts_before_the_next_admission(
        links: list[StateLink]) -> None:
    store = RedisClientStore(links[0], SystemClock())
    key = KeyPolicy("team", budget_usd=1.0)
    granted = 0
    for _ in range(15):         # each end posted, not waited for, then the next admission
        grant = await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL)
        if isinstance(grant, Refused):
            break
        granted += 1
        await store.finish(grant, Usage(1, 1), 0.1, TOTAL)
    assert granted == 10
    assert (await store.account("team", TOTAL)).period.spend_usd == pytest.approx(1.0)


async def test_scripts_flushed_from_redis_are_loaded_again(
        links: list[StateLink], redis_url: str) -> None:
    store = RedisClientStore(links[0], SystemClock())
    key = KeyPolicy("team", RateLimits(rpm=100))
    assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    results = await asyncio.gather(*(
        store.admit(OPEN, key, PromptEstimate.known(0), TOTAL) for _ in range(5)))
    assert all(isinstance(r, Grant) for r in results) and links[0].up
    assert (await store.account("team", TOTAL)).period.requests == 6


async def test_a_hung_server_is_an_outage_not_a_hang() -> None:
    server = RedisServer()
    server.start()
    link = StateLink(server.url)
    try:
        store = RedisClientStore(link, SystemClock())
        key = KeyPolicy("team", RateLimits(rpm=100))
        assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(
                store.admit(OPEN, key, PromptEstimate.known(0), TOTAL) for _ in range(3)))
            assert time.monotonic() - started < 5 * CALL_TIMEOUT_S     # one timeout for all
            assert all(isinstance(r, Grant) for r in results) and not link.up
        finally:
            server.process.send_signal(signal.SIGCONT)
        await link._probe()
        assert link.up
        assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
        assert link.up
    finally:
        await link.close()
        server.stop()


async def script_calls(url: str) -> int:
    """How many scripts the server has run so far."""
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(stats.get(name, {}).get("calls", 0))
               for name in ("cmdstat_eval", "cmdstat_evalsha"))


async def test_answers_through_closed_breakers_make_no_round_trip(
        links: list[StateLink], redis_url: str) -> None:
    health = Health(store=RedisUpstreamStore(links[0]))
    before = await script_calls(redis_url)
    for _ in range(20):
        attempt = health.begin(("p", "m"), "p/k")
        attempt.succeeded(0.1)
        attempt.end(10)
    await links[0].flushed()
    assert await script_calls(redis_url) == before
    attempt = health.begin(("p", "m"), "p/k")
    attempt.failed(Outcome(ErrorClass.SERVER, "500", 500))     # a failure is shared: two
    attempt.end()                                              # breakers, one script each
    await links[0].flushed()
    assert await script_calls(redis_url) == before + 2


async def test_health_is_local_while_redis_is_unreachable() -> None:
    server = RedisServer()
    server.start()
    link = StateLink(server.url)
    try:
        health = Health(HealthSettings(cooldown_s=0.3), store=RedisUpstreamStore(link))
        target = ("p", "m")
        server.stop()
        for _ in range(3):
            attempt = health.begin(target, None)
            attempt.failed(Outcome(ErrorClass.SERVER, "500", 500))
            attempt.end()
        await link.flushed()
        assert not link.up and not health.target_available(target)
        await asyncio.sleep(0.4)
        trial = health.begin(target, None)     # half-open: the trial is this process's
        assert trial.on_trial and await trial.confirm_trials()
        assert not health.target_available(target)
        trial.succeeded()
        trial.end()
        assert health.target_available(target)
    finally:
        await link.close()
        server.stop()


async def test_a_connection_the_server_closed_while_idle_is_opened_again(
        links: list[StateLink], redis_url: str) -> None:
    store = RedisClientStore(links[0], SystemClock())
    key = KeyPolicy("team", RateLimits(rpm=100))
    assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.client_kill_filter(_type="normal", skipme=True)
    finally:
        await client.aclose()
    await asyncio.sleep(0.1)            # the link reads the close
    assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
    assert links[0].up


async def test_requests_nothing_limits_reach_the_shared_accounts(
        links: list[StateLink]) -> None:
    # Counted and ended without a round trip (Limiter.count, Admission.finish_at_once):
    # what each instance counted is pushed, and every instance then reads the sum.
    policy = LimitsPolicy(keys={"team": KeyPolicy("team")}, upstream={"p/k": OPEN})
    limiters = [Limiter(clients=RedisClientStore(link, SystemClock()),
                        upstream=RedisUpstreamStore(link)) for link in links[:2]]
    for n, limiter in enumerate(limiters, start=1):
        admission = limiter.count(policy, "team", NO_PROMPT)
        use = limiter.upstream_count(policy, "p/k")
        assert admission is not None and use is not None
        assert admission.finish_at_once(Usage(n, 10 * n), 0.25 * n, use)
    for limiter in limiters:
        assert isinstance(limiter.clients, RedisClientStore)
        assert isinstance(limiter.upstream, RedisUpstreamStore)
        await limiter.clients.push()
        await limiter.upstream.push()
    reader = RedisClientStore(links[2], SystemClock())
    account = await reader.account("team", TOTAL)
    assert (account.lifetime.requests, account.lifetime.prompt_tokens,
            account.lifetime.completion_tokens, account.lifetime.spend_usd) == (2, 3, 30, 0.75)
    upstream = await RedisUpstreamStore(links[2]).shared_usage("p/k")
    assert (upstream.requests, upstream.prompt_tokens, upstream.completion_tokens,
            upstream.spend_usd) == (2, 3, 30, 0.75)


async def test_a_unix_socket_url_and_its_database_number_are_followed() -> None:
    with tempfile.TemporaryDirectory(prefix="trk-", dir="/tmp") as scratch:    # a short path
        server = RedisServer(unix_socket=Path(scratch) / "redis.sock")
        server.start()
        link = StateLink(f"unix://{server.unix_socket}?db=2")
        try:
            store = RedisClientStore(link, SystemClock())
            key = KeyPolicy("team", RateLimits(rpm=100))
            grant = await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL)
            assert isinstance(grant, Grant) and link.up
            await store.finish(grant, Usage(3, 4), 0.5, TOTAL)
            assert (await store.account("team", TOTAL)).period.spend_usd == pytest.approx(0.5)
            for db, expected in ((2, 1), (0, 0)):
                client = aioredis.Redis.from_url(f"{server.url[:-2]}/{db}")
                try:
                    assert await client.exists("truckllm:c:team:acct") == expected
                finally:
                    await client.aclose()
        finally:
            await link.close()
            server.stop()


async def test_a_password_in_the_url_logs_in_and_a_wrong_one_is_an_outage() -> None:
    server = RedisServer()
    server.start()
    client = aioredis.Redis.from_url(server.url)
    await client.config_set("requirepass", "s3cret-pw")
    await client.aclose()
    right = StateLink(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0")
    wrong = StateLink(f"redis://default:not-it-pw@127.0.0.1:{server.port}/0")
    try:
        key = KeyPolicy("team", RateLimits(rpm=100))
        store = RedisClientStore(right, SystemClock())
        assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
        assert right.up
        other = RedisClientStore(wrong, SystemClock())
        # refused login: served from the fallback, and the password is nowhere in the error
        assert isinstance(await other.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
        assert not wrong.up and wrong.last_error is not None
        assert "not-it-pw" not in wrong.last_error
        client = aioredis.Redis.from_url(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0")
        try:    # the one admission Redis counted is the logged-in link's
            assert await client.zcard("truckllm:c:team:rpm") == 1
        finally:
            await client.aclose()
    finally:
        await right.close()
        await wrong.close()
        server.stop()


async def test_a_rediss_url_talks_tls_and_checks_the_servers_certificate(
        tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
         str(cert), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trusted = StateLink(f"rediss://localhost:{port}/0?ssl_ca_certs={cert}")
    untrusted = StateLink(f"rediss://localhost:{port}/0")     # the system's CAs only
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                await asyncio.sleep(0.05)
        key_policy = KeyPolicy("team", RateLimits(rpm=100))
        store = RedisClientStore(trusted, SystemClock())
        assert isinstance(await store.admit(OPEN, key_policy, PromptEstimate.known(0), TOTAL),
                          Grant)
        assert trusted.up and (await store.current("team"))[0] == 1
        other = RedisClientStore(untrusted, SystemClock())
        assert isinstance(await other.admit(OPEN, key_policy, PromptEstimate.known(0), TOTAL),
                          Grant)
        assert not untrusted.up and "certificate" in (untrusted.last_error or "").lower()
    finally:
        await trusted.close()
        await untrusted.close()
        server.terminate()
        server.wait(10)


async def test_a_server_that_does_not_speak_redis_is_an_outage() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(garbage, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    link = StateLink(f"redis://127.0.0.1:{port}/0")
    try:
        store = RedisClientStore(link, SystemClock())
        key = KeyPolicy("team", RateLimits(rpm=100))
        assert isinstance(await store.admit(OPEN, key, PromptEstimate.known(0), TOTAL), Grant)
        assert not link.up and "InvalidResponse" in (link.last_error or "")
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
