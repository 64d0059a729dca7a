"""The client store's contract (docs/dev/state.md), through the `ClientStore` methods alone:
what any backend must do. Runs against the in-memory store; a shared backend adds itself
to `STORES` (Redis: a real redis-server, see tests/redis_server.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from truckllm.clock import ManualClock
from truckllm.limits import KeyPolicy, RateLimits
from truckllm.limits.accounts import Account
from truckllm.limits.clients import ClientStore, Grant, LimitScope, MemoryClientStore, Refused
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.redis_clients import RedisClientStore
from truckllm.limits.redis_link import StateLink
from truckllm.usage import Usage

TOTAL = datetime(1970, 1, 1, tzinfo=UTC)
UNLIMITED = RateLimits()
# Redis keeps time by its own clock: its windows are made short, and moving the test's
# clock waits that much (scaled) for real.
REDIS_TIME_SCALE = 0.005


class RedisTime(ManualClock):
    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        time.sleep(seconds * REDIS_TIME_SCALE)


def memory_store(clock: ManualClock, redis_url: str | None) -> ClientStore:
    return MemoryClientStore(clock)


def redis_store(clock: ManualClock, redis_url: str | None) -> ClientStore:
    assert redis_url is not None
    return RedisClientStore(StateLink(redis_url), clock, window_s=60 * REDIS_TIME_SCALE)


STORES: dict[str, Callable[[ManualClock, str | None], ClientStore]] = {
    "memory": memory_store, "redis": redis_store}


@pytest.fixture(params=list(STORES))
async def made(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ClientStore, ManualClock]]:
    if request.param == "redis":
        store = STORES["redis"](RedisTime(), request.getfixturevalue("redis_url"))
        assert isinstance(store, RedisClientStore)
        yield store, store.clock
        await store.link.close()
    else:
        clock = ManualClock()
        yield STORES[request.param](clock, None), clock


def tokens(count: int) -> PromptEstimate:
    return PromptEstimate.known(count)


async def granted(store: ClientStore, key: KeyPolicy | None, estimate: int = 0,
                  gateway: RateLimits = UNLIMITED, period: datetime = TOTAL) -> Grant:
    result = await store.admit(gateway, key, tokens(estimate), period)
    assert isinstance(result, Grant)
    return result


async def test_a_refusal_counts_nothing(made: tuple[ClientStore, ManualClock]) -> None:
    store, _ = made
    key = KeyPolicy("a", RateLimits(rpm=1, tpm=100))
    await granted(store, key, 40)
    for _ in range(3):
        refused = await store.admit(UNLIMITED, key, tokens(40), TOTAL)
        assert isinstance(refused, Refused) and refused.scope is LimitScope.KEY
        assert refused.refusal is not None and refused.refusal.limit == "rpm"
    assert await store.current("a") == (1, 40, 1)
    assert (await store.account("a", TOTAL)).period.requests == 1


async def test_the_gateway_refuses_after_the_key_passes(made: tuple[ClientStore, ManualClock]) -> None:
    store, _ = made
    gateway = RateLimits(max_concurrent=1)
    await granted(store, KeyPolicy("a"), gateway=gateway)
    refused = await store.admit(gateway, KeyPolicy("b"), tokens(0), TOTAL)
    assert isinstance(refused, Refused) and refused.scope is LimitScope.GATEWAY
    assert await store.current("b") == (0, 0, 0)             # b's refusal took no slot


async def test_budget_is_checked_first_and_settling_reconciles(
        made: tuple[ClientStore, ManualClock]) -> None:
    store, _ = made
    key = KeyPolicy("a", RateLimits(tpm=1000), budget_usd=1.0)
    grant = await granted(store, key, 600)
    await store.finish(grant, Usage(prompt_tokens=100, completion_tokens=50), 1.0, TOTAL)
    assert await store.current("a") == (0, 150, 0)            # the real usage replaced 600
    refused = await store.admit(UNLIMITED, key, tokens(0), TOTAL)
    assert isinstance(refused, Refused) and refused.scope is None
    assert refused.spend_usd == 1.0


async def test_a_new_period_starts_from_zero_and_lifetime_keeps_counting(
        made: tuple[ClientStore, ManualClock]) -> None:
    store, _ = made
    key = KeyPolicy("a", budget_usd=5.0, budget_period="daily")
    monday, tuesday = (datetime(2026, 1, day, tzinfo=UTC) for day in (12, 13))
    grant = await granted(store, key, period=monday)
    await store.finish(grant, Usage(prompt_tokens=10, completion_tokens=0), 2.0, monday)
    grant = await granted(store, key, period=tuesday)
    await store.finish(grant, None, 0.5, tuesday)
    account = await store.account("a", tuesday)
    assert (account.period.requests, account.period.spend_usd) == (1, 0.5)
    assert (account.lifetime.requests, account.lifetime.tokens, account.lifetime.spend_usd) == (2, 10, 2.5)


async def test_reset_keeps_slots_and_a_window_reopens_with_time(
        made: tuple[ClientStore, ManualClock]) -> None:
    store, clock = made
    key = KeyPolicy("a", RateLimits(rpm=2))
    held = await granted(store, key)
    await granted(store, key)
    assert isinstance(await store.admit(UNLIMITED, key, tokens(0), TOTAL), Refused)
    await store.reset("a", TOTAL)
    assert await store.current("a") == (0, 0, 2)              # windows zeroed, slots kept
    await store.release(held)
    clock.advance(60)
    await granted(store, key)


async def test_snapshot_restore_and_retain(made: tuple[ClientStore, ManualClock]) -> None:
    store, clock = made
    if not isinstance(store, MemoryClientStore):
        pytest.skip("a shared store keeps usage itself: there is no state file to restore")
    grant = await granted(store, KeyPolicy("a"))
    await store.finish(grant, Usage(prompt_tokens=3, completion_tokens=4), 0.25, TOTAL)
    saved = store.snapshot()
    restarted = STORES["memory"](clock, None)
    restarted.restore({key_id: Account.from_dict(data) for key_id, data in saved.items()})
    assert (await restarted.account("a", TOTAL)).lifetime.spend_usd == 0.25
    restarted.retain(["b"])
    assert "a" not in restarted.snapshot()
