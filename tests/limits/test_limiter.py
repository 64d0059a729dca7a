"""The Limiter through its public API, with a manual clock: admission, refusals and their
headers, reconciliation, concurrency slots, budgets, reloads, upstream-key accounting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from truckllm.errors import PermissionDenied, RateLimited
from truckllm.limits import (
    BudgetExceeded,
    KeyPolicy,
    Limiter,
    LimitsPolicy,
    ManualClock,
    RateLimitExceeded,
    RateLimits,
)
from truckllm.usage import Usage


def make_policy(gateway: RateLimits | None = None, upstream: dict[str, RateLimits] | None = None,
                **keys: KeyPolicy) -> LimitsPolicy:
    return LimitsPolicy(gateway=gateway or RateLimits(), keys=keys, upstream=upstream or {})


def make_limiter() -> tuple[Limiter, ManualClock]:
    clock = ManualClock()
    return Limiter(clock), clock


async def test_rpm_headers_count_down_to_zero_then_429() -> None:
    limiter, clock = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(rpm=3)))
    remaining = []
    for _ in range(3):
        admission = await limiter.admit(policy, "a", 10)
        remaining.append(limiter.key_headers(admission.key)["x-ratelimit-remaining-requests"])
        await admission.release()
        clock.advance(1)
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(policy, "a", 10)
    error = refused.value
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert (error.scope, error.limit) == ("key", "rpm")
    headers = error.headers()
    assert headers["Retry-After"] == "57"                    # the first request leaves at t=60
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "59s"    # the newest leaves at t=62
    assert "x-ratelimit-limit-tokens" not in headers


async def test_the_window_reopens_when_the_oldest_request_leaves() -> None:
    limiter, clock = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(rpm=2)))
    await (await limiter.admit(policy, "a", 0)).release()
    clock.advance(30)
    await (await limiter.admit(policy, "a", 0)).release()
    clock.advance(29.9)
    with pytest.raises(RateLimited):
        await limiter.admit(policy, "a", 0)
    clock.advance(0.1)
    await (await limiter.admit(policy, "a", 0)).release()                  # exactly 60 s after the first
    with pytest.raises(RateLimited):
        await limiter.admit(policy, "a", 0)


async def test_a_refused_request_counts_for_nothing() -> None:
    limiter, clock = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(rpm=1, tpm=100)))
    await (await limiter.admit(policy, "a", 50)).release()
    for _ in range(5):
        with pytest.raises(RateLimited):
            await limiter.admit(policy, "a", 50)
    assert (await limiter.key_report(policy, "a"))["requests"] == 1
    clock.advance(60)
    headers = limiter.key_headers((await limiter.admit(policy, "a", 50)).key)
    assert headers["x-ratelimit-remaining-tokens"] == "50"


async def test_64_concurrent_callers_get_exactly_rpm_admissions_per_window() -> None:
    limiter, clock = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(rpm=10)))
    outcomes: list[str] = []

    async def one_request() -> None:
        await asyncio.sleep(0)
        try:
            admission = await limiter.admit(policy, "a", 20)
        except RateLimitExceeded:
            outcomes.append("429")
            return
        try:
            await asyncio.sleep(0)                   # the upstream call, interleaved
            await admission.settle(Usage(prompt_tokens=20, completion_tokens=5), 0.0)
            outcomes.append("200")
        finally:
            await admission.release()

    await asyncio.gather(*(one_request() for _ in range(64)))
    assert outcomes.count("200") == 10 and outcomes.count("429") == 54
    clock.advance(60)
    outcomes.clear()
    await asyncio.gather(*(one_request() for _ in range(64)))
    assert outcomes.count("200") == 10 and outcomes.count("429") == 54


async def test_tpm_reserves_the_estimate_and_reconciles_with_real_usage() -> None:
    limiter, clock = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(tpm=1000)))
    first = await limiter.admit(policy, "a", 600)
    assert limiter.key_headers(first.key)["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimitExceeded) as refused:       # 600 + 500 > 1000 while reserved
        await limiter.admit(policy, "a", 500)
    assert refused.value.limit == "tpm"
    await first.settle(Usage(prompt_tokens=250, completion_tokens=50), 0.0)
    await first.release()
    assert limiter.key_headers(first.key)["x-ratelimit-remaining-tokens"] == "700"
    second = await limiter.admit(policy, "a", 500)                 # fits now that 300 were real
    await second.settle(Usage(prompt_tokens=600, completion_tokens=300), 0.0)
    assert limiter.key_headers(second.key)["x-ratelimit-remaining-tokens"] == "0"   # 1200 used: over, shown as 0
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(policy, "a", 1)
    assert refused.value.retry_after_s == pytest.approx(60.0)       # both must leave
    clock.advance(60)
    await limiter.admit(policy, "a", 1000)


async def test_unknown_usage_keeps_the_reservation() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(tpm=1000)))
    admission = await limiter.admit(policy, "a", 400)
    await admission.settle(None)
    assert limiter.key_headers(admission.key)["x-ratelimit-remaining-tokens"] == "600"


async def test_a_request_larger_than_tpm_is_refused_without_retry_after() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(tpm=100)))
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(policy, "a", 101)
    assert "too large" in refused.value.message
    assert "Retry-After" not in refused.value.headers()


async def test_concurrency_slots_are_held_until_released_once() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(max_concurrent=2)))
    first = await limiter.admit(policy, "a", 0)
    second = await limiter.admit(policy, "a", 0)
    await first.settle(Usage(), 0.0)                                # settling does not free the slot
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(policy, "a", 0)
    assert refused.value.limit == "max_concurrent"
    assert refused.value.headers()["Retry-After"] == "1"
    await first.release()
    await first.release()                                           # idempotent: frees one slot only
    third = await limiter.admit(policy, "a", 0)
    with pytest.raises(RateLimitExceeded):
        await limiter.admit(policy, "a", 0)
    assert (await limiter.key_report(policy, "a"))["current"]["in_flight"] == 2
    await second.release()
    await third.release()
    assert (await limiter.key_report(policy, "a"))["current"]["in_flight"] == 0


async def test_gateway_limits_apply_across_keys_and_to_open_access() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(RateLimits(rpm=2), a=KeyPolicy("a"), b=KeyPolicy("b"))
    await (await limiter.admit(policy, "a", 0)).release()
    await (await limiter.admit(policy, None, 0)).release()
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(policy, "b", 0)
    assert refused.value.scope == "gateway"
    assert refused.value.headers()["Retry-After"] == "60"
    assert "x-ratelimit-limit-requests" not in refused.value.headers()   # b has no limits


async def test_a_key_refused_by_the_gateway_keeps_its_own_window_untouched() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(RateLimits(max_concurrent=1), a=KeyPolicy("a", RateLimits(rpm=5)))
    held = await limiter.admit(policy, "a", 0)
    with pytest.raises(RateLimitExceeded):
        await limiter.admit(policy, "a", 0)
    assert limiter.key_headers(held.key)["x-ratelimit-remaining-requests"] == "4"


async def test_keys_without_rpm_or_tpm_get_no_headers() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(max_concurrent=3)))
    assert limiter.key_headers((await limiter.admit(policy, "a", 5)).key) == {}


async def test_budget_refuses_once_spend_reaches_it_and_in_flight_requests_still_settle() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(rpm=100), budget_usd=1.0, budget_period="daily"))
    streaming = await limiter.admit(policy, "a", 10)                # admitted under budget
    second = await limiter.admit(policy, "a", 10)
    await streaming.settle(Usage(prompt_tokens=10, completion_tokens=10), 0.75)
    await second.settle(Usage(prompt_tokens=10, completion_tokens=10), 0.5)   # crosses the budget
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(policy, "a", 10)
    error = refused.value
    assert isinstance(error, PermissionDenied)
    assert (error.status, error.type, error.code) == (403, "permission_error", "budget_exceeded")
    assert error.headers()["x-ratelimit-remaining-requests"] == "98"
    report = await limiter.key_report(policy, "a")
    assert report["spend_usd"] == pytest.approx(1.25)
    assert report["budget_left_usd"] == 0.0
    assert report["requests"] == 2 and report["tokens"] == 40


async def test_budget_periods_reset_on_calendar_boundaries_in_utc() -> None:
    clock = ManualClock(datetime(2026, 1, 31, 23, 0, tzinfo=UTC))   # a Saturday
    limiter = Limiter(clock)
    policy = make_policy(m=KeyPolicy("m", budget_usd=1.0, budget_period="monthly"),
                         w=KeyPolicy("w", budget_usd=1.0, budget_period="weekly"),
                         t=KeyPolicy("t", budget_usd=1.0, budget_period="total"))
    for key in ("m", "w", "t"):
        await (await limiter.admit(policy, key, 0)).settle(Usage(), 5.0)
    assert (await limiter.key_report(policy, "m"))["period_resets_at"] == "2026-02-01T00:00:00Z"
    assert (await limiter.key_report(policy, "w"))["period_resets_at"] == "2026-02-02T00:00:00Z"
    assert (await limiter.key_report(policy, "t"))["period_resets_at"] is None
    clock.advance(3600)                                       # Sunday 1 Feb, 00:00
    await (await limiter.admit(policy, "m", 0)).release()
    with pytest.raises(BudgetExceeded):
        await limiter.admit(policy, "w", 0)
    clock.advance(24 * 3600)                                  # Monday
    await (await limiter.admit(policy, "w", 0)).release()
    with pytest.raises(BudgetExceeded):
        await limiter.admit(policy, "t", 0)
    report = await limiter.key_report(policy, "m")
    assert report["spend_usd"] == 0.0 and report["lifetime"]["spend_usd"] == 5.0


async def test_reset_key_gives_a_fresh_period_and_window() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(rpm=1), budget_usd=1.0))
    admission = await limiter.admit(policy, "a", 0)
    await admission.settle(Usage(prompt_tokens=5), 2.0)
    await admission.release()
    with pytest.raises(BudgetExceeded):
        await limiter.admit(policy, "a", 0)
    assert await limiter.reset_key(policy, "a") is True
    assert await limiter.reset_key(policy, "nobody") is False
    await (await limiter.admit(policy, "a", 0)).release()
    report = await limiter.key_report(policy, "a")
    assert report["requests"] == 1 and report["spend_usd"] == 0.0
    assert report["lifetime"]["spend_usd"] == 2.0


async def test_a_reload_keeps_surviving_ids_and_drops_vanished_ones() -> None:
    limiter, _ = make_limiter()
    old = make_policy(a=KeyPolicy("a", budget_usd=10.0), b=KeyPolicy("b", budget_usd=10.0))
    for key in ("a", "b"):
        await (await limiter.admit(old, key, 0)).settle(Usage(), 3.0)
    new = make_policy(a=KeyPolicy("a", RateLimits(rpm=5), budget_usd=2.0))
    with pytest.raises(BudgetExceeded):                      # spend kept, new budget applies
        await limiter.admit(new, "a", 0)
    assert set(limiter.snapshot()["client_keys"]) == {"a"}
    back = make_policy(a=KeyPolicy("a"), b=KeyPolicy("b", budget_usd=10.0))
    assert (await limiter.key_report(back, "b"))["spend_usd"] == 0.0


async def test_upstream_keys_are_skipped_at_their_limit_and_reopen() -> None:
    limiter, clock = make_limiter()
    policy = make_policy(upstream={"openai/main": RateLimits(rpm=2, tpm=1000),
                                   "openai/spare": RateLimits()})
    assert limiter.upstream_has_capacity(policy, "openai/main", 300)
    first = await limiter.upstream_acquire(policy, "openai/main", 300)
    await (await limiter.upstream_acquire(policy, "openai/main", 300)).settle(Usage(100, 50), 0.01)
    assert not limiter.upstream_has_capacity(policy, "openai/main", 10)      # rpm 2 reached
    assert limiter.upstream_wait_s(policy, "openai/main", 10) == pytest.approx(60.0)
    assert limiter.upstream_has_capacity(policy, "openai/spare", 10 ** 9)    # no limits
    await first.settle(Usage(prompt_tokens=800, completion_tokens=100), 0.02)
    clock.advance(60)
    assert limiter.upstream_has_capacity(policy, "openai/main", 999)
    report = limiter.upstream.key("openai/main").usage
    assert report.requests == 2 and report.tokens == 1050
    assert report.spend_usd == pytest.approx(0.03)


async def test_a_key_without_rpm_or_tpm_is_counted_at_once_and_one_with_either_acquired() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(upstream={"openai/main": RateLimits(rpm=2), "openai/spare": RateLimits()})
    assert limiter.upstream_count(policy, "openai/main") is None     # acquired, windows and all
    use = limiter.upstream_count(policy, "openai/spare")
    assert use is not None and limiter.upstream_count(policy, "openai/other") is not None
    await use.settle(Usage(100, 50), 0.01)
    spare = limiter.upstream.key("openai/spare").usage
    assert (spare.requests, spare.tokens, spare.spend_usd) == (1, 150, 0.01)
    assert limiter.upstream.key("openai/other").usage.requests == 1
    assert limiter.upstream.key("openai/main").usage.requests == 0
    # The same counts as acquiring: for a key without limits the two are one.
    await (await limiter.upstream_acquire(policy, "openai/spare", 10)).settle(None)
    assert limiter.upstream.key("openai/spare").usage.requests == 2


async def test_upstream_tpm_counts_the_estimate_until_settled() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(upstream={"p/k": RateLimits(tpm=1000)})
    use = await limiter.upstream_acquire(policy, "p/k", 900)
    assert not limiter.upstream_has_capacity(policy, "p/k", 200)
    assert limiter.upstream_wait_s(policy, "p/k", 2000) is None              # never fits
    await use.settle(Usage(prompt_tokens=100, completion_tokens=0))
    assert limiter.upstream_has_capacity(policy, "p/k", 900)


async def test_changes_counter_moves_on_everything_worth_saving() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a"))
    before = limiter.changes
    admission = await limiter.admit(policy, "a", 0)
    await admission.settle(Usage(), 0.0)
    await admission.release()
    assert limiter.changes == before + 2


async def test_a_request_and_its_unlimited_upstream_key_are_charged_together_and_exactly() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(upstream={"p/free": RateLimits()}, a=KeyPolicy("a"))
    for _ in range(2):                                       # uses of a key without rpm/tpm
        admission = await limiter.admit(policy, "a", 0)
        use = await limiter.upstream_acquire(policy, "p/free", 0)
        await admission.settle(Usage(prompt_tokens=10, completion_tokens=5), 0.25, use)
        await admission.release()
    await (await limiter.upstream_acquire(policy, "p/free", 0)).settle(None)   # a failed attempt
    upstream = limiter.upstream.key("p/free").usage
    assert (upstream.requests, upstream.tokens, upstream.spend_usd) == (3, 30, 0.5)
    key = await limiter.key_report(policy, "a")
    assert (key["requests"], key["tokens"], key["spend_usd"]) == (2, 30, 0.5)
    assert key["current"]["in_flight"] == 0


async def test_finish_settles_and_releases_once_whatever_came_before() -> None:
    limiter, _ = make_limiter()
    policy = make_policy(a=KeyPolicy("a", RateLimits(max_concurrent=1)))
    admission = await limiter.admit(policy, "a", 0)
    await admission.finish(Usage(prompt_tokens=3, completion_tokens=2), 0.5)
    await admission.finish(Usage(prompt_tokens=3, completion_tokens=2), 0.5)
    report = await limiter.key_report(policy, "a")
    assert (report["tokens"], report["spend_usd"], report["current"]["in_flight"]) == (5, 0.5, 0)
    second = await limiter.admit(policy, "a", 0)            # the slot came back
    await second.settle(None, 0.25)
    await second.finish(None, 1.0)                           # settled already: only releases
    report = await limiter.key_report(policy, "a")
    assert (report["spend_usd"], report["current"]["in_flight"]) == (0.75, 0)
