"""Runtime routing state across config reloads: what survives, what is forgotten."""

from __future__ import annotations

from truckllm.config.loader import load_bytes
from truckllm.pipeline.dispatch import adopt
from truckllm.pipeline.retry import ErrorClass, Outcome
from truckllm.pipeline.router import Routing
from truckllm.runtime.state import State, build_state


def make_state(version: int, providers: str, cooldown_s: int = 30) -> State:
    config = f"""
version: 1
providers:
{providers}
models:
  - alias: chat
    targets: [{{provider: a, model: m}}]
routing: {{cooldown_s: {cooldown_s}}}
"""
    return build_state(load_bytes(config.encode(), "t.yaml", {}), version)


A_AND_B = """
  - {id: a, type: openai, keys: [{id: k1, value: x}, {id: k2, value: y}]}
  - {id: b, type: openai, keys: [{id: k1, value: z}]}
"""
ONLY_A = """
  - {id: a, type: openai, keys: [{id: k1, value: x}]}
"""


def fail(routing: Routing, target: tuple[str, str], key: str, outcome: Outcome) -> None:
    attempt = routing.health.begin(target, key)
    attempt.failed(outcome)
    attempt.end()


def test_reload_keeps_surviving_ids_and_forgets_the_rest() -> None:
    routing = Routing()
    adopt(routing, make_state(1, A_AND_B))
    fail(routing, ("a", "m"), "a/k1", Outcome(ErrorClass.RATE_LIMITED, "slow", 429, 50))
    fail(routing, ("a", "m"), "a/k2", Outcome(ErrorClass.AUTH, "no", 401))
    fail(routing, ("b", "m"), "b/k1", Outcome(ErrorClass.RATE_LIMITED, "slow", 429, 50))
    attempt = routing.health.begin(("a", "m"), "a/k1")
    attempt.succeeded(0.4)
    attempt.end()
    routing.cursors.next_index("alias:chat")

    adopt(routing, make_state(2, ONLY_A, cooldown_s=5))
    assert routing.health.settings.cooldown_s == 5
    assert not routing.health.key_available("a/k1")          # still cooling: it survived
    assert (routing.health.key_health("a/k1").requests, routing.health.key_health("a/k1").errors) == (2, 1)
    assert routing.health.latency_estimate(("a", "m")) is not None
    assert routing.health.key_health("b/k1").errors == 0     # provider b is gone
    assert routing.cursors.next_index("alias:chat") == 1     # the cursor survived
    assert not routing.health.key_health("a/k2").disabled     # gone from config: forgotten


def test_reload_gives_rejected_keys_another_chance_and_old_snapshots_change_nothing() -> None:
    routing = Routing()
    first = make_state(1, A_AND_B)
    adopt(routing, first)
    fail(routing, ("a", "m"), "a/k2", Outcome(ErrorClass.AUTH, "no", 401))
    adopt(routing, first)                                    # same snapshot again: nothing
    assert routing.health.key_health("a/k2").disabled
    adopt(routing, make_state(2, A_AND_B))
    assert not routing.health.key_health("a/k2").disabled
    fail(routing, ("a", "m"), "a/k2", Outcome(ErrorClass.AUTH, "no", 401))
    adopt(routing, first)                                    # a request still on version 1
    assert routing.health.key_health("a/k2").disabled
