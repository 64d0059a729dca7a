"""Per upstream-key counters (GET /admin/v1/providers) and config diffs (reload lines)."""

from __future__ import annotations

from truckllm.config.changes import diff_configs
from truckllm.config.loader import load_bytes
from truckllm.observe.upstream_stats import UpstreamStats, provider_status
from truckllm.pipeline.record import RequestRecord, UpstreamFailure
from truckllm.usage import Usage


def make_record(failures: tuple[UpstreamFailure, ...], attempts: int, status: int = 200,
                key: str | None = "main") -> RequestRecord:
    return RequestRecord(
        timestamp=0.0, request_id="r", method="POST", path="/v1/chat/completions",
        key_id="team-a", alias="gpt", provider_id="openai", upstream_model="m", status=status,
        latency_s=0.1, overhead_s=0.001, ttft_s=None, usage=Usage(5, 7) if status < 400 else None,
        attempts=attempts, cost_usd=None, error_reason=None, stream=False,
        upstream_key_id=key, upstream_failures=failures)


def test_counts_status_and_retain() -> None:
    stats = UpstreamStats()
    stats.observe(make_record((), 1))
    stats.observe(make_record((UpstreamFailure("openai", "backup", "429"),), 2))
    main, backup = stats.key("openai", "main"), stats.key("openai", "backup")
    assert (main.requests, main.tokens, main.errors, main.status) == (2, 24, 0, "healthy")
    assert (backup.requests, backup.errors, backup.last_error, backup.status) == (1, 1, "429", "degraded")

    failures = tuple(UpstreamFailure("openai", "backup", "500") for _ in range(3))
    stats.observe(make_record(failures, 3, status=502))
    assert stats.key("openai", "backup").status == "down"
    assert provider_status([stats.key("openai", k).status for k in ("main", "backup")]) == "degraded"
    assert provider_status(["down", "down"]) == "down"
    assert provider_status([]) == "healthy"

    stats.retain([("openai", "main")])                  # backup vanished from the config
    assert stats.key("openai", "backup").requests == 0
    assert stats.key("openai", "main").requests == 2


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
