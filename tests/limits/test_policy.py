"""The limits fields of the config file: accepted, rejected with their path, compiled."""

from __future__ import annotations

import pytest

from truckllm.config.loader import ConfigError, load_bytes
from truckllm.limits import RateLimits, compile_policy, upstream_ref

BASE = """\
version: 1
server: {state_file: run/usage.json}
providers:
  - id: up
    type: openai
    keys: [{id: main, value: sk-test, rpm: 3500, tpm: 2000000}, {id: spare, value: sk-two}]
models:
  - alias: gpt-4o
    targets: [{provider: up, model: gpt-4o}]
    pricing: {input_per_mtok: 2.5, output_per_mtok: 10, cache_read_per_mtok: 1.25}
    context_window: 128000
  - alias: free
    targets: [{provider: up, model: small}]
keys:
  - id: team-a
    key: k-a
    rpm: 60
    tpm: 200000
    max_concurrent: 8
    budget_usd: 100
    budget_period: monthly
  - {id: team-b, key: k-b, budget_usd: 5}
limits: {rpm: 20000, tpm: 5000000, max_concurrent: 2000}
"""


def test_every_limits_field_loads_and_compiles() -> None:
    loaded = load_bytes(BASE.encode(), "config.yaml", env={})
    assert loaded.config.server.state_file == "run/usage.json"
    assert loaded.config.models[0].context_window == 128000
    policy = compile_policy(loaded.config)
    assert policy.gateway == RateLimits(20000, 5000000, 2000)
    team_a = policy.keys["team-a"]
    assert team_a.rates == RateLimits(60, 200000, 8)
    assert (team_a.budget_usd, team_a.budget_period) == (100, "monthly")
    assert policy.keys["team-b"].budget_period == "total"           # the default period
    assert policy.upstream == {upstream_ref("up", "main"): RateLimits(3500, 2000000),
                               "up/spare": RateLimits()}
    assert set(policy.pricing) == {"gpt-4o"}
    assert policy.pricing["gpt-4o"].cache_write_per_mtok is None


@pytest.mark.parametrize(("old", "new", "path"), [
    ("rpm: 60", "rpm: -1", "keys[0].rpm"),
    ("tpm: 200000\n", "tpm: -5\n", "keys[0].tpm"),
    ("max_concurrent: 8", "max_concurrent: -8", "keys[0].max_concurrent"),
    ("budget_usd: 100", "budget_usd: -100", "keys[0].budget_usd"),
    ("budget_period: monthly", "budget_period: yearly", "keys[0].budget_period"),
    ("rpm: 3500", "rpm: -3500", "providers[0].keys[0].rpm"),
    ("limits: {rpm: 20000", "limits: {rpm: -1", "limits.rpm"),
    ("input_per_mtok: 2.5", "input_per_mtok: -2.5", "models[0].pricing.input_per_mtok"),
    ("output_per_mtok: 10, ", "", "models[0].pricing.output_per_mtok"),
    ("cache_read_per_mtok", "cache_reads_per_mtok", "models[0].pricing.cache_reads_per_mtok"),
    ("context_window: 128000", "context_window: 0", "models[0].context_window"),
    ("limits: {rpm", "limits: {rps", "limits.rps"),
])
def test_bad_limits_are_rejected_with_their_path(old: str, new: str, path: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError) as failed:
        load_bytes(BASE.replace(old, new, 1).encode(), "config.yaml", env={})
    assert path in [issue.path for issue in failed.value.issues]


def test_a_budget_period_needs_a_budget() -> None:
    text = BASE.replace("{id: team-b, key: k-b, budget_usd: 5}", "{id: team-b, key: k-b, budget_period: daily}")
    with pytest.raises(ConfigError) as failed:
        load_bytes(text.encode(), "config.yaml", env={})
    [issue] = failed.value.issues
    assert (issue.path, issue.message) == ("keys[1].budget_period", "budget_period needs budget_usd")
    assert issue.location is not None and issue.location.startswith("config.yaml:")


def test_zero_limits_are_allowed_and_refuse_everything() -> None:
    loaded = load_bytes(BASE.replace("rpm: 60", "rpm: 0").encode(), "config.yaml", env={})
    assert compile_policy(loaded.config).keys["team-a"].rates.rpm == 0
