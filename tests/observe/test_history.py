"""The per-second history the console charts: counts, quantiles, the hour bound."""

from __future__ import annotations

from tests.observe.records import record_with
from truckllm.observe.history import SAMPLES_PER_SECOND, SECONDS, History
from truckllm.pipeline.record import RequestRecord
from truckllm.usage import Usage


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(at: float, latency_s: float = 0.1, status: int = 200, tokens: int = 10,
           cost: float | None = 0.001) -> RequestRecord:
    return record_with(
        timestamp=at - latency_s, request_id="r", method="POST", path="/v1/chat/completions",
        key_id="team-a", alias="gpt", provider_id="openai", upstream_model="gpt-4o",
        status=status, latency_s=latency_s, overhead_s=0.0, ttft_s=None,
        usage=Usage(prompt_tokens=tokens, completion_tokens=0), attempts=1, cost_usd=cost,
        error_reason=None, stream=False)


def test_each_second_counts_requests_errors_tokens_cost_and_latency_quantiles() -> None:
    clock = Clock(1_000_010.5)
    history = History(clock)
    for n in range(100):                          # second 1_000_000: 1..100 ms
        history.observe(record(1_000_000.2, latency_s=(n + 1) / 1000))
    history.observe(record(1_000_003.0, status=503, tokens=0, cost=None))
    history.observe(record(1_000_003.5, status=429))
    series = history.report()["series"]
    assert series["t"] == [1_000_000, 1_000_003]
    assert series["requests"] == [100, 2]
    assert series["errors"] == [0, 1] and series["client_errors"] == [0, 1]
    assert series["p50_ms"][0] == 50.0 and series["p95_ms"][0] == 96.0
    assert series["tokens"] == [1000, 10]
    assert round(series["cost_usd"][0], 6) == 0.1
    assert history.report(since=1_000_000)["series"]["t"] == [1_000_003]
    assert history.report(since=1_000_003)["series"]["t"] == []


def test_only_the_last_hour_is_kept_and_memory_is_bounded() -> None:
    clock = Clock(2_000_000.0)
    history = History(clock)
    history.observe(record(2_000_000.0 - SECONDS - 5))       # older than an hour
    history.observe(record(1_999_000.0))
    for _ in range(SAMPLES_PER_SECOND * 2):
        history.observe(record(2_000_000.0, latency_s=0.5))
    report = history.report()
    assert report["series"]["t"] == [1_999_000, 2_000_000]
    assert report["series"]["requests"][1] == SAMPLES_PER_SECOND * 2
    assert report["series"]["p95_ms"][1] == 500.0
    clock.now += SECONDS                                    # an hour later: all gone
    assert history.report()["series"]["t"] == []
    history.observe(record(clock.now))                     # its slot is reused
    assert history.report()["series"]["requests"] == [1]
