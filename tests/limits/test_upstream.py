"""The upstream store: one record per upstream key, its counters as the admin API shows
them (GET /admin/v1/providers), fed by attempts through health."""

from __future__ import annotations

from truckllm.clock import ManualClock
from truckllm.pipeline.health import Health
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
