"""Routing fields in the config: defaults, shapes and cross-checks."""

from __future__ import annotations

import pytest

from truckllm.config.loader import ConfigError, load_bytes

BASE = b"""
version: 1
providers:
  - id: demo
    type: mock
models:
  - alias: small
    targets: [{provider: demo, model: m}]
"""


def test_defaults() -> None:
    config = load_bytes(BASE, "c.yaml", {}).config
    assert config.routing.max_attempts == 3
    assert config.routing.retry_on == [429, 500, 502, 503, 504, 529, "timeout", "connect"]
    assert config.routing.cooldown_s == 30
    assert config.routing.wait_for_recovery_ms == 0
    model = config.models[0]
    assert model.strategy == "fallback" and model.fallback_on_context_overflow is None
    assert model.targets[0].weight == 1
    provider = config.providers[0]
    assert provider.connect_timeout_s == 10 and provider.idle_timeout_s == 60
    assert provider.first_byte_timeout_s is None and provider.health_check_interval_s is None


def test_full_routing_section() -> None:
    raw = BASE + b"""
  - alias: big
    strategy: weighted
    targets:
      - {provider: demo, model: a, weight: 3}
      - {provider: demo, model: b, weight: 1}
routing:
  max_attempts: 5
  retry_on: [429, 503, timeout]
  cooldown_s: 10
  wait_for_recovery_ms: 500
"""
    raw = raw.replace(b"    targets: [{provider: demo, model: m}]",
                      b"    targets: [{provider: demo, model: m}]\n    fallback_on_context_overflow: big")
    config = load_bytes(raw, "c.yaml", {}).config
    assert config.models[0].fallback_on_context_overflow == "big"
    assert config.models[1].strategy == "weighted"
    assert config.routing.retry_on == [429, 503, "timeout"]


@pytest.mark.parametrize(("extra", "path", "message"), [
    (b"routing: {retry_on: [200]}", "routing.retry_on[0]", ""),
    (b"routing: {retry_on: [sometimes]}", "routing.retry_on[0]", ""),
    (b"routing: {max_attempts: 0}", "routing.max_attempts", ""),
    (b"routing: {cooldown: 5}", "routing.cooldown", "unknown field"),
    (b"routing: {cooldown_s: 30000}", "routing.cooldown_s", "3600"),
])
def test_bad_routing_values(extra: bytes, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_bytes(BASE + extra, "c.yaml", {})
    paths = [issue.path for issue in caught.value.issues]
    assert any(p.startswith(path) for p in paths), paths
    assert all(message in issue.message for issue in caught.value.issues)


def test_strategy_typo_is_an_error() -> None:
    raw = BASE.replace(b"  - alias: small\n", b"  - alias: small\n    strategy: round-robin\n")
    with pytest.raises(ConfigError) as caught:
        load_bytes(raw, "c.yaml", {})
    assert caught.value.issues[0].path == "models[0].strategy"


@pytest.mark.parametrize(("fallback", "message"), [
    (b"nope", "unknown alias 'nope'"),
    (b"small", "cannot be its own"),
])
def test_context_fallback_must_name_another_alias(fallback: bytes, message: str) -> None:
    raw = BASE + b"    fallback_on_context_overflow: " + fallback + b"\n"
    with pytest.raises(ConfigError) as caught:
        load_bytes(raw, "c.yaml", {})
    issue = caught.value.issues[0]
    assert issue.path == "models[0].fallback_on_context_overflow"
    assert message in issue.message
    assert issue.location == "c.yaml:9:35"
