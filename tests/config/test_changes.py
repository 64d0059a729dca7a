"""Config diffs: what a reload line and the reload answer say changed."""

from __future__ import annotations

from truckllm.config.changes import diff_configs
from truckllm.config.loader import load_bytes

BASE = b"""version: 1
server: {port: 8080}
providers:
  - {id: demo, type: mock, keys: [{id: a, value: x1234}, {id: b, value: y1234}]}
  - {id: gone, type: mock}
models:
  - {alias: one, targets: [{provider: demo, model: m}]}
  - {alias: two, targets: [{provider: demo, model: m}]}
keys: [{id: team-a, key: team-secret-1}]
"""
CHANGED = b"""version: 1
server: {port: 9090, log_level: debug}
providers:
  - {id: demo, type: mock, keys: [{id: a, value: x1234}, {id: c, value: z1234}]}
  - {id: new, type: mock}
models:
  - {alias: one, targets: [{provider: new, model: m}]}
  - {alias: three, targets: [{provider: demo, model: m}]}
keys: [{id: team-a, key: team-secret-2}, {id: team-b, key: team-secret-3}]
"""


def test_diff_names_what_changed_by_id_and_never_a_value() -> None:
    changes = diff_configs(load_bytes(BASE, "a", {}).config, load_bytes(CHANGED, "b", {}).config)
    shown = changes.as_dict()
    assert shown["providers"] == {"added": ["new"], "removed": ["gone"], "changed": ["demo"]}
    assert shown["upstream_keys"] == {"added": ["demo/c"], "removed": ["demo/b"], "changed": []}
    assert shown["aliases"] == {"added": ["three"], "removed": ["two"], "changed": ["one"]}
    assert shown["client_keys"] == {"added": ["team-b"], "removed": [], "changed": ["team-a"]}
    assert shown["server"] == ["port", "log_level"]
    assert shown["needs_restart"] == ["server.port"]
    assert "team-secret" not in str(shown) and "1234" not in str(shown)
    same = diff_configs(load_bytes(BASE, "a", {}).config, load_bytes(BASE, "a", {}).config)
    assert same.as_dict() == {}


def test_a_new_response_store_needs_a_restart_and_its_ttl_does_not() -> None:
    old = load_bytes(BASE + b"responses: {store: responses.db, ttl_days: 30}\n", "a", {}).config
    moved = load_bytes(BASE + b"responses: {store: memory, ttl_days: 30}\n", "b", {}).config
    shorter = load_bytes(BASE + b"responses: {store: responses.db, ttl_days: 7}\n", "c", {}).config
    assert diff_configs(old, moved).needs_restart == ("responses.store",)
    changed = diff_configs(old, shorter)
    assert changed.needs_restart == () and changed.sections == ("responses",)
