"""Router: target order per strategy, key choice by weight, next candidate after a failure.
Health is real (driven by a hand clock); nothing sleeps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import get_args

from truckllm.clock import ManualClock
from truckllm.config.schema import ModelConfig
from truckllm.pipeline.health import Health
from truckllm.pipeline.retry import ErrorClass, Outcome
from truckllm.pipeline.router import (
    STRATEGIES,
    Candidate,
    Cursors,
    RouteTarget,
    Strategy,
    earliest_recovery_s,
    next_candidate,
    plan,
    usability,
)


@dataclass(frozen=True, slots=True)
class KeyOption:
    """An upstream key as the router sees it: an id and a weight."""

    id: str
    weight: float = 1.0


A = RouteTarget("a", "model-a", keys=(KeyOption("k1"),))
B = RouteTarget("b", "model-b", keys=(KeyOption("k1"),))
C = RouteTarget("c", "model-c", keys=(KeyOption("k1"),))


def make_health() -> tuple[Health, ManualClock]:
    clock = ManualClock()
    return Health(clock=clock), clock


def first_targets(strategy: Strategy, targets: list[RouteTarget], picks: int,
                  health: Health | None = None) -> Counter[str]:
    cursors = Cursors()
    health = health or make_health()[0]
    return Counter(plan("alias", strategy, targets, cursors, health)[0].target.provider_id
                   for _ in range(picks))


def test_strategy_names_match_the_config_schema() -> None:
    field = ModelConfig.model_fields["strategy"]
    assert set(get_args(field.annotation)) == set(STRATEGIES)
    assert set(get_args(Strategy)) == set(STRATEGIES)


def test_fallback_keeps_the_written_order() -> None:
    health, _ = make_health()
    for _ in range(5):
        order = [c.target for c in plan("alias", "fallback", [A, B, C], Cursors(), health)]
        assert order == [A, B, C]


def test_round_robin_spreads_evenly() -> None:
    counts = first_targets("round_robin", [A, B, C], 300)
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_round_robin_keeps_the_rest_as_fallbacks() -> None:
    health, _ = make_health()
    cursors = Cursors()
    plans = [[c.target.provider_id for c in plan("x", "round_robin", [A, B, C], cursors, health)]
             for _ in range(3)]
    assert plans == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_weighted_follows_the_weights() -> None:
    heavy = RouteTarget("a", "m", weight=3, keys=(KeyOption("k"),))
    light = RouteTarget("b", "m", weight=1, keys=(KeyOption("k"),))
    never = RouteTarget("c", "m", weight=0, keys=(KeyOption("k"),))
    counts = first_targets("weighted", [heavy, light, never], 400)
    assert abs(counts["a"] - 300) <= 12 and abs(counts["b"] - 100) <= 12
    assert counts["c"] == 0


def test_weighted_skips_an_unusable_target() -> None:
    health, _ = make_health()
    attempt = health.begin(A.target_id, "a/k1")
    attempt.failed(Outcome(ErrorClass.AUTH, "no", 401))
    attempt.end()
    counts = first_targets("weighted", [A, B], 100, health)
    assert counts == {"b": 100}


def test_least_busy_prefers_fewest_in_flight() -> None:
    health, _ = make_health()
    busy = [health.begin(A.target_id, None) for _ in range(3)]
    busy += [health.begin(B.target_id, None)]
    counts = first_targets("least_busy", [A, B, C], 30, health)
    assert counts == {"c": 30}
    for attempt in busy:
        attempt.end()
    assert first_targets("least_busy", [A, B, C], 30, health) == {"a": 10, "b": 10, "c": 10}


def test_lowest_latency_prefers_the_fastest_and_measures_the_unknown() -> None:
    health, _ = make_health()
    for target, ttft in ((A, 2.0), (B, 0.3)):
        attempt = health.begin(target.target_id, None)
        attempt.succeeded(ttft)
        attempt.end()
    assert first_targets("lowest_latency", [A, B, C], 5, health) == {"c": 5}   # never measured
    attempt = health.begin(C.target_id, None)
    attempt.succeeded(0.9)
    attempt.end()
    order = [c.target.provider_id for c in plan("x", "lowest_latency", [A, B, C], Cursors(), health)]
    assert order == ["b", "c", "a"]


def test_keys_rotate_by_weight() -> None:
    target = RouteTarget("p", "m", keys=(KeyOption("k1", 2), KeyOption("k2", 1), KeyOption("k3", 1)))
    health, _ = make_health()
    cursors = Cursors()
    firsts = Counter(plan("x", "fallback", [target], cursors, health)[0].key_id for _ in range(400))
    assert firsts == {"k1": 200, "k2": 100, "k3": 100}
    candidates = plan("x", "fallback", [target], cursors, health)
    assert sorted(c.key_id or "" for c in candidates) == ["k1", "k2", "k3"]


def test_keys_cooling_disabled_or_at_capacity_are_skipped_then_listed_last() -> None:
    target = RouteTarget("p", "m", keys=(KeyOption("k1"), KeyOption("k2"), KeyOption("k3")))
    health, _ = make_health()
    for key, outcome in (("p/k1", Outcome(ErrorClass.RATE_LIMITED, "429", 429, 10)),
                         ("p/k2", Outcome(ErrorClass.AUTH, "401", 401))):
        attempt = health.begin(target.target_id, key)
        attempt.failed(outcome)
        attempt.end()
    for _ in range(5):
        candidates = plan("x", "fallback", [target], Cursors(), health)
        assert candidates[0].key_id == "k3"
    at_capacity = {"k3"}

    def has_capacity(provider_id: str, key_id: str) -> bool:
        return key_id not in at_capacity

    candidates = plan("x", "fallback", [target], Cursors(), health, has_capacity)
    assert not any(usability(health, has_capacity)(c) for c in candidates)
    # k1 cools for 10 s; k3 frees up within a second; k2 never (until reload).
    assert earliest_recovery_s(candidates, health, has_capacity) == 1.0
    at_capacity.clear()
    assert earliest_recovery_s(candidates, health, has_capacity) == 0


def two_key_plan() -> list[Candidate]:
    a = RouteTarget("a", "m", keys=(KeyOption("k1"), KeyOption("k2")))
    b = RouteTarget("b", "m", keys=(KeyOption("k1"),))
    return plan("x", "fallback", [a, b], Cursors(), make_health()[0])


def test_after_a_429_the_next_key_of_the_same_target_goes_first() -> None:
    candidates = two_key_plan()
    tried = [candidates[0]]
    chosen = next_candidate(candidates, tried, ErrorClass.RATE_LIMITED, lambda c: c not in tried)
    assert chosen == candidates[1] and chosen.target.provider_id == "a"


def test_after_a_server_error_another_target_goes_first() -> None:
    candidates = two_key_plan()
    tried = [candidates[0]]
    chosen = next_candidate(candidates, tried, ErrorClass.SERVER, lambda c: True)
    assert chosen is not None and chosen.target.provider_id == "b"


def test_a_tried_candidate_may_go_again_when_nothing_else_is_usable() -> None:
    candidates = two_key_plan()
    only = candidates[0]
    chosen = next_candidate(candidates, list(candidates), ErrorClass.SERVER, lambda c: c == only)
    assert chosen == only
    assert next_candidate(candidates, [], None, lambda c: False) is None


def test_cursors_survive_and_prune() -> None:
    cursors = Cursors()
    cursors.next_index("alias:x")
    cursors.next_index("alias:gone")
    cursors.prune({"alias:x"})
    assert cursors.next_index("alias:x") == 1
    assert cursors.next_index("alias:gone") == 0
