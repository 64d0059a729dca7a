"""Health: cooldowns, disabled keys, breakers, in-flight counts, latency estimates.
A hand-driven clock replaces time, so nothing here sleeps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from truckllm.clock import ManualClock
from truckllm.pipeline.health import Health, HealthSettings, Status
from truckllm.pipeline.retry import ErrorClass, Outcome, connect_failed, timed_out

TARGET = ("openai", "gpt-4o")
KEY = "openai/main"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.fromtimestamp(5_000_000.0, UTC))


@pytest.fixture
def health(clock: ManualClock) -> Health:
    settings = HealthSettings(cooldown_s=30, breaker_failures=3, breaker_window_s=60)
    return Health(settings, clock=clock)


def rate_limited(retry_after_s: float | None = None) -> Outcome:
    return Outcome(ErrorClass.RATE_LIMITED, "slow down", 429, retry_after_s)


def server_error() -> Outcome:
    return Outcome(ErrorClass.SERVER, "boom", 500)


def fail(health: Health, outcome: Outcome, target: tuple[str, str] = TARGET,
         key: str | None = KEY) -> None:
    attempt = health.begin(target, key)
    attempt.failed(outcome)
    attempt.end()


def succeed(health: Health, target: tuple[str, str] = TARGET, key: str | None = KEY,
            ttft_s: float | None = None) -> None:
    attempt = health.begin(target, key)
    attempt.succeeded(ttft_s)
    attempt.end()


def test_unknown_ids_are_available_and_healthy(health: Health) -> None:
    assert health.available(TARGET, KEY)
    assert health.key_health(KEY).status is Status.HEALTHY
    assert health.provider_status("openai", [KEY]) is Status.HEALTHY
    assert health.seconds_until_available(TARGET, KEY) == 0


def test_429_with_retry_after_cools_the_key_for_that_long(health: Health, clock: ManualClock) -> None:
    fail(health, rate_limited(retry_after_s=12))
    assert not health.key_available(KEY)
    assert health.target_available(TARGET)          # the target itself is fine
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(12)
    view = health.key_health(KEY)
    assert view.status is Status.DOWN
    assert view.cooldown_until == pytest.approx(clock.wall() + 12)
    clock.advance(11.9)
    assert not health.key_available(KEY)
    clock.advance(0.2)
    assert health.key_available(KEY)
    assert health.key_health(KEY).cooldown_until is None


def test_429_without_retry_after_uses_cooldown_and_repeats_extend_it(health: Health, clock: ManualClock) -> None:
    fail(health, rate_limited())
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(30)
    clock.advance(30)
    assert health.key_available(KEY)
    fail(health, rate_limited())
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(60)
    clock.advance(60)
    fail(health, rate_limited())
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(120)
    clock.advance(120)
    succeed(health)                                  # a success resets the streak
    fail(health, rate_limited())
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(30)


def test_cooldown_is_capped(health: Health, clock: ManualClock) -> None:
    for _ in range(12):
        fail(health, rate_limited())
        clock.advance(health.seconds_until_available(TARGET, KEY) or 0)
    fail(health, rate_limited())
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(300)


def test_upstream_401_disables_the_key_until_reload(health: Health, clock: ManualClock) -> None:
    fail(health, Outcome(ErrorClass.AUTH, "rejected", 401))
    clock.advance(10_000)
    assert not health.key_available(KEY)
    view = health.key_health(KEY)
    assert view.disabled and view.status is Status.DOWN and view.cooldown_until is None
    assert health.seconds_until_available(TARGET, KEY) is None
    assert health.seconds_until_available(TARGET, KEY) is None
    assert health.provider_status("openai", [KEY]) is Status.DOWN
    health.prune([KEY], ["openai"])
    assert health.key_available(KEY)


def test_breaker_opens_after_consecutive_failures_and_half_opens(health: Health, clock: ManualClock) -> None:
    fail(health, server_error())
    fail(health, timed_out("first byte"))
    assert health.available(TARGET, KEY)
    assert health.target_status(TARGET) is Status.DEGRADED
    fail(health, connect_failed("refused"))
    assert not health.target_available(TARGET)
    assert not health.key_available(KEY)
    assert health.target_status(TARGET) is Status.DOWN
    assert health.seconds_until_available(TARGET, KEY) == pytest.approx(30)

    clock.advance(30)                                # half-open: exactly one trial
    assert health.target_available(TARGET)
    trial = health.begin(TARGET, KEY)
    assert not health.target_available(TARGET)
    trial.succeeded(0.2)
    trial.end()
    assert health.target_available(TARGET)
    assert health.target_status(TARGET) is Status.HEALTHY


def test_failed_half_open_trial_reopens_for_longer(health: Health, clock: ManualClock) -> None:
    for _ in range(3):
        fail(health, server_error())
    clock.advance(30)
    fail(health, server_error())                     # the trial fails
    assert not health.target_available(TARGET)
    assert health.seconds_until_available(TARGET, None) == pytest.approx(60)


def test_cancelled_trial_frees_the_slot(health: Health, clock: ManualClock) -> None:
    for _ in range(3):
        fail(health, server_error(), key=None)
    clock.advance(30)
    trial = health.begin(TARGET, None)
    assert not health.target_available(TARGET)
    trial.end()                                      # the client left before an answer
    assert health.target_available(TARGET)


def test_failures_outside_the_window_do_not_open(health: Health, clock: ManualClock) -> None:
    fail(health, server_error())
    fail(health, server_error())
    clock.advance(61)
    fail(health, server_error())
    assert health.target_available(TARGET)


def test_success_resets_the_failure_count(health: Health) -> None:
    fail(health, server_error())
    fail(health, server_error())
    succeed(health)
    fail(health, server_error())
    assert health.target_available(TARGET)
    assert health.key_health(KEY).status is Status.DEGRADED


def test_client_errors_do_not_count_against_health(health: Health) -> None:
    for _ in range(5):
        fail(health, Outcome(ErrorClass.CLIENT_ERROR, "bad", 400))
        fail(health, Outcome(ErrorClass.CONTEXT_OVERFLOW, "too long", 400))
    assert health.available(TARGET, KEY)
    assert health.target_status(TARGET) is Status.HEALTHY


def test_in_flight_counts_until_end(health: Health) -> None:
    first = health.begin(TARGET, KEY)
    second = health.begin(TARGET, KEY)
    assert health.in_flight(TARGET) == 2
    first.succeeded(0.1)
    assert health.in_flight(TARGET) == 2             # a stream is in flight until it ends
    first.end(tokens=40)
    first.end(tokens=40)                             # ending twice counts once
    second.end()
    assert health.in_flight(TARGET) == 0
    view = health.key_health(KEY)
    assert (view.requests, view.tokens) == (2, 40)


def test_latency_estimate_blends_and_decays(health: Health, clock: ManualClock) -> None:
    assert health.latency_estimate(TARGET) is None
    succeed(health, ttft_s=1.0)
    assert health.latency_estimate(TARGET) == pytest.approx(1.0)
    succeed(health, ttft_s=2.0)
    assert health.latency_estimate(TARGET) == pytest.approx(1.3)
    clock.advance(120)                               # one half-life later
    assert health.latency_estimate(TARGET) == pytest.approx(0.65)


def test_earliest_recovery_across_candidates(health: Health) -> None:
    other = ("claude", "sonnet")
    fail(health, rate_limited(retry_after_s=20))
    fail(health, rate_limited(retry_after_s=5), target=other, key="claude/k1")
    waits = [health.seconds_until_available(TARGET, KEY),
             health.seconds_until_available(other, "claude/k1")]
    assert min(wait for wait in waits if wait is not None) == pytest.approx(5)


def test_provider_status_from_keys(health: Health) -> None:
    keys = ["openai/a", "openai/b"]
    fail(health, rate_limited(), key="openai/a")
    assert health.provider_status("openai", keys) is Status.DEGRADED
    fail(health, rate_limited(), key="openai/b")
    assert health.provider_status("openai", keys) is Status.DOWN
    assert health.key_health("openai/b").last_error == "429"


def test_prune_forgets_removed_ids_and_keeps_the_rest(health: Health) -> None:
    fail(health, rate_limited(retry_after_s=50), key="openai/a")
    fail(health, rate_limited(retry_after_s=50), target=("gone", "m"), key="gone/k")
    succeed(health, ttft_s=0.5)
    health.prune(["openai/a"], ["openai"])
    assert not health.key_available("openai/a")      # survived, still cooling
    assert health.key_available("gone/k")            # forgotten
    assert health.latency_estimate(TARGET) == pytest.approx(0.5)
    assert health.latency_estimate(("gone", "m")) is None


def test_target_entries_stay_bounded(health: Health, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("truckllm.pipeline.health.MAX_TARGETS", 5)
    fail(health, server_error(), target=("p", "broken"), key=None)
    busy = health.begin(("p", "busy"), None)
    for index in range(20):
        succeed(health, target=("p", f"model-{index}"), key=None)
    assert health.store.target_count() <= 5
    assert health.target_status(("p", "broken")) is Status.DEGRADED    # kept: it has failures
    assert health.in_flight(("p", "busy")) == 1                         # kept: in flight
    busy.end()


def test_last_failure_is_the_latest_message_of_the_pairs(health: Health, clock: ManualClock) -> None:
    assert health.last_failure([(TARGET, KEY)]) is None
    fail(health, server_error())                          # on the target and the key
    clock.advance(1)
    fail(health, rate_limited(), target=("claude", "sonnet"), key="claude/k1")   # the key only
    assert health.last_failure([(TARGET, KEY), (("claude", "sonnet"), "claude/k1")]) == "slow down"
    assert health.last_failure([(TARGET, None), (("claude", "sonnet"), None)]) == "boom"
