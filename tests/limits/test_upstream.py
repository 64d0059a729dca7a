"""The upstream store: one record per upstream key, its counters as the admin API shows
them (GET /admin/v1/providers), fed by attempts through health; and the contract of its
health transitions (docs/dev/state.md), stated for two instances on one store: in memory
(one process: both share the store) and on a real redis-server (each its own
`RedisUpstreamStore`; `shared()` waits for the posted transitions and one refresh)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from truckllm.clock import ManualClock, SystemClock
from truckllm.limits.redis_link import StateLink
from truckllm.limits.redis_upstream import RedisUpstreamStore
from truckllm.limits.upstream import HealthSettings, MemoryUpstreamStore
from truckllm.pipeline.health import Attempt, Health, Status
from truckllm.pipeline.retry import ErrorClass, Outcome

TARGET = ("openai", "m")
OTHER = ("openai", "other")


def answer(health: Health, ref: str, tokens: int) -> None:
    attempt = health.begin(TARGET, ref)
    attempt.succeeded()
    attempt.end(tokens)


def fail(health: Health, ref: str, outcome: Outcome, target: tuple[str, str] = TARGET) -> None:
    attempt = health.begin(target, ref)
    attempt.failed(outcome)
    attempt.end()


def test_counts_status_and_retain() -> None:
    health = Health(clock=ManualClock())
    answer(health, "openai/main", 12)
    fail(health, "openai/backup", Outcome(ErrorClass.SERVER, "boom", 500), OTHER)
    answer(health, "openai/main", 12)
    main, backup = health.key_health("openai/main"), health.key_health("openai/backup")
    assert (main.requests, main.tokens, main.errors, main.status) == (2, 24, 0, "healthy")
    assert (backup.requests, backup.errors, backup.last_error, backup.status) == (1, 1, "500", "degraded")

    for _ in range(2):
        fail(health, "openai/backup", Outcome(ErrorClass.SERVER, "boom", 500), OTHER)
    assert health.key_health("openai/backup").status == "down"
    assert health.provider_status("openai", ["openai/main", "openai/backup"]) == "degraded"
    assert health.provider_status("unused", []) == "healthy"
    fail(health, "openai/main", Outcome(ErrorClass.CLIENT_ERROR, "bad", 400))   # still an error
    assert health.key_health("openai/main").errors == 1

    health.prune(["openai/main"], ["openai"])              # backup vanished from the config
    assert health.key_health("openai/backup").requests == 0
    assert health.key_health("openai/main").requests == 3


# Real time on both backends (Redis keeps its own clock): cooldowns are kept short.
SETTINGS = HealthSettings(cooldown_s=0.5, breaker_failures=3, breaker_window_s=30)
KEY = "openai/main"
SERVER_ERROR = Outcome(ErrorClass.SERVER, "boom", 500)

Two = tuple[Health, Health, Callable[[], Awaitable[None]]]


@pytest.fixture(params=["memory", "redis"])
async def two(request: pytest.FixtureRequest) -> AsyncIterator[Two]:
    clock = SystemClock()
    if request.param == "memory":
        store = MemoryUpstreamStore(clock)

        async def nothing() -> None:
            return None
        yield Health(SETTINGS, clock=clock, store=store), Health(SETTINGS, clock=clock, store=store), nothing
        return
    url = request.getfixturevalue("redis_url")
    stores = [RedisUpstreamStore(StateLink(url), clock) for _ in range(2)]

    async def shared() -> None:
        for store in stores:
            await store.link.flushed()
        for store in stores:
            await store.refresh_health()
    try:
        yield Health(SETTINGS, clock=clock, store=stores[0]), Health(SETTINGS, clock=clock, store=stores[1]), shared
    finally:
        for store in stores:
            await store.link.close()


async def go(attempt: Attempt) -> bool:
    """Whether the attempt is sent: an attempt on a half-open breaker confirms its trial."""
    return not attempt.on_trial or await attempt.confirm_trials()


async def open_breaker(a: Health, b: Health, shared: Callable[[], Awaitable[None]]) -> None:
    for health in (a, b, a):
        fail(health, KEY, SERVER_ERROR)
        await shared()


async def test_failures_on_both_instances_open_the_breaker_once_counted(two: Two) -> None:
    a, b, shared = two
    fail(a, KEY, SERVER_ERROR)
    await shared()
    fail(b, KEY, SERVER_ERROR)
    await shared()
    assert a.available(TARGET, KEY) and b.available(TARGET, KEY)
    assert b.target_status(TARGET) is Status.DEGRADED
    fail(a, KEY, SERVER_ERROR)          # the third, counted with the other two
    await shared()
    for health in (a, b):
        assert not health.target_available(TARGET) and not health.key_available(KEY)
        assert health.target_status(TARGET) is Status.DOWN
        wait = health.seconds_until_available(TARGET, KEY)
        assert wait is not None and 0 < wait <= 0.5


async def test_a_success_resets_the_failures_for_both(two: Two) -> None:
    a, b, shared = two
    fail(a, KEY, SERVER_ERROR)
    fail(b, KEY, SERVER_ERROR)
    await shared()
    answer(b, KEY, 1)
    await shared()
    fail(a, KEY, SERVER_ERROR)
    fail(b, KEY, SERVER_ERROR)
    await shared()
    assert a.target_available(TARGET) and b.target_available(TARGET)


async def test_exactly_one_instance_takes_the_half_open_trial(two: Two) -> None:
    a, b, shared = two
    await open_breaker(a, b, shared)
    await asyncio.sleep(0.6)            # half-open
    assert a.available(TARGET, KEY) and b.available(TARGET, KEY)
    # Both begin before either has confirmed (a shared store's copies cannot know yet).
    attempts = [health.begin(TARGET, KEY) for health in (a, b) if health.available(TARGET, KEY)]
    sent = await asyncio.gather(*(go(attempt) for attempt in attempts))
    assert sent.count(True) == 1
    trial = attempts[sent.index(True)]
    await shared()
    assert not a.available(TARGET, KEY) and not b.available(TARGET, KEY)
    trial.succeeded(0.1)                # the trial's success closes the breaker for both
    trial.end()
    await shared()
    for health in (a, b):
        assert health.available(TARGET, KEY) and health.target_status(TARGET) is Status.HEALTHY
    assert a.in_flight(TARGET) == b.in_flight(TARGET) == 0    # the withdrawn one too


async def test_a_cancelled_trial_goes_to_the_other_instance(two: Two) -> None:
    a, b, shared = two
    await open_breaker(a, b, shared)
    await asyncio.sleep(0.6)
    first = a.begin(TARGET, KEY)
    assert await go(first)
    await shared()
    assert not b.available(TARGET, KEY)
    first.end()                         # the client left before an answer
    await shared()
    assert b.available(TARGET, KEY)
    assert await go(b.begin(TARGET, KEY))


async def test_a_failed_trial_opens_the_breaker_again_for_longer(two: Two) -> None:
    a, b, shared = two
    await open_breaker(a, b, shared)
    await asyncio.sleep(0.6)
    trial = b.begin(TARGET, KEY)
    assert await go(trial)
    trial.failed(SERVER_ERROR)
    trial.end()
    await shared()
    for health in (a, b):
        assert not health.available(TARGET, KEY)
        wait = health.seconds_until_available(TARGET, KEY)
        assert wait is not None and 0.5 < wait <= 1.0


async def test_a_429_on_one_instance_cools_the_key_for_both(two: Two) -> None:
    a, b, shared = two
    fail(a, KEY, Outcome(ErrorClass.RATE_LIMITED, "429", 429, retry_after_s=20))
    await shared()
    for health in (a, b):
        assert not health.key_available(KEY)
        assert health.target_available(TARGET)          # a 429 is the key's, not the model's
        wait = health.seconds_until_available(TARGET, KEY)
        assert wait is not None and 18 < wait <= 20
        assert health.key_health(KEY).status is Status.DOWN


async def test_a_rejected_key_is_off_for_both_until_a_reload(two: Two) -> None:
    a, b, shared = two
    fail(b, KEY, Outcome(ErrorClass.AUTH, "401", 401))
    await shared()
    for health in (a, b):
        assert not health.key_available(KEY)
        assert health.seconds_until_available(TARGET, KEY) is None
    for health in (a, b):               # every instance reloads
        health.prune([KEY], ["openai"])
    await shared()
    assert a.key_available(KEY) and b.key_available(KEY)


async def test_failures_older_than_the_window_do_not_count(two: Two) -> None:
    a, b, shared = two
    for health in (a, b):
        health.configure(HealthSettings(cooldown_s=0.5, breaker_failures=3, breaker_window_s=0.3))
    fail(a, KEY, SERVER_ERROR)
    fail(b, KEY, SERVER_ERROR)
    await shared()
    await asyncio.sleep(0.4)
    await shared()                      # the refresh forgets them too
    assert b.target_status(TARGET) is Status.HEALTHY
    fail(b, KEY, SERVER_ERROR)
    await shared()
    assert a.target_available(TARGET) and b.target_available(TARGET)
