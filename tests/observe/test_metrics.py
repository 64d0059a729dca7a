"""Metrics exposition parsed with prometheus-client's own parser, after known records."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.observe.records import record_with
from truckllm.limits import LimitScope
from truckllm.observe.metrics import AliasLabels, Metrics, PlainCounter, PlainHistogram
from truckllm.pipeline.record import RequestRecord, UpstreamFailure
from truckllm.usage import Usage


def make_record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = dict(
        timestamp=1_700_000_000.0, request_id="req-1", key_id="team-a", alias="gpt-4o",
        provider_id="openai", upstream_model="gpt-4o-2024", status=200, latency_s=1.5,
        overhead_s=0.0004, ttft_s=None, usage=Usage(prompt_tokens=10, completion_tokens=5),
        attempts=1, cost_usd=0.002, error_reason=None, method="POST",
        path="/v1/chat/completions", stream=False)
    fields.update(overrides)
    return record_with(**fields)


def samples(metrics: Metrics) -> list[Sample]:
    text = metrics.render()[0].decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = [s.value for s in samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def make_metrics() -> Metrics:
    metrics = Metrics()
    metrics.set_config(["gpt-4o", "openai/*"], "ab" * 32, 1)
    return metrics


def test_requests_tokens_cost_and_latency_after_known_traffic() -> None:
    metrics = make_metrics()
    metrics.observe(make_record())
    metrics.observe(make_record(status=502, error_reason="upstream", usage=None, cost_usd=0.0,
                                latency_s=70.0))
    metrics.observe(make_record(ttft_s=0.3, latency_s=3.0))

    assert value(metrics, "llm_requests_total", provider="openai", model="gpt-4o", status="200") == 2
    assert value(metrics, "llm_requests_total", provider="openai", model="gpt-4o", status="502") == 1
    assert value(metrics, "llm_tokens_total", provider="openai", model="gpt-4o", kind="prompt") == 20
    assert value(metrics, "llm_tokens_total", provider="openai", model="gpt-4o", kind="completion") == 10
    assert value(metrics, "llm_cost_usd_total", model="gpt-4o", key="team-a") == 0.004
    assert value(metrics, "llm_request_duration_seconds_count", provider="openai", model="gpt-4o") == 3
    assert value(metrics, "llm_request_duration_seconds_bucket", provider="openai", model="gpt-4o",
                 le="2.0") == 1
    assert value(metrics, "llm_request_duration_seconds_bucket", provider="openai", model="gpt-4o",
                 le="120.0") == 3
    assert value(metrics, "llm_time_to_first_token_seconds_count", provider="openai", model="gpt-4o") == 1
    assert value(metrics, "llm_overhead_seconds_count") == 3
    assert value(metrics, "llm_overhead_seconds_bucket", le="0.0005") == 3


def test_model_label_is_always_a_configured_alias() -> None:
    metrics = make_metrics()
    metrics.observe(make_record(alias="openai/gpt-4.1-mini-2025"))
    metrics.observe(make_record(alias="no-such-model-<script>", status=404, provider_id=None))
    metrics.observe(make_record(alias=None, status=400, provider_id=None))

    models = {s.labels["model"] for s in samples(metrics) if s.name == "llm_requests_total"}
    assert models == {"openai/*", ""}
    assert value(metrics, "llm_requests_total", provider="", model="", status="404") == 1


def test_model_label_follows_the_aliases_of_the_config_in_use() -> None:
    """The series a record feeds are remembered per (provider, alias, status, key); a new
    config's aliases must still decide the model label of the next record."""
    metrics = make_metrics()
    metrics.observe(make_record())
    metrics.set_config(["openai/*"], "cd" * 32, 2)
    metrics.observe(make_record())
    metrics.set_config(["gpt-4o"], "ef" * 32, 3)
    metrics.observe(make_record(cost_usd=0.001))

    assert value(metrics, "llm_requests_total", provider="openai", model="gpt-4o", status="200") == 2
    assert value(metrics, "llm_requests_total", provider="openai", model="", status="200") == 1
    assert value(metrics, "llm_tokens_total", provider="openai", model="", kind="prompt") == 10
    assert value(metrics, "llm_cost_usd_total", model="gpt-4o", key="team-a") == 0.003


def test_upstream_errors_and_rate_limits() -> None:
    metrics = make_metrics()
    metrics.count_upstream_error("openai", "main", "429")
    metrics.count_upstream_error("openai", "main", "429")
    metrics.observe(make_record(status=429, error_reason="rate_limited:key", usage=None,
                                limit_scope=LimitScope.KEY))

    assert value(metrics, "llm_upstream_errors_total", provider="openai", key="main", reason="429") == 2
    assert value(metrics, "llm_rate_limited_total", key="team-a", scope="key") == 1


def test_inflight_gauge() -> None:
    metrics = make_metrics()
    metrics.inflight.inc()
    metrics.inflight.inc()
    metrics.inflight.dec()
    assert value(metrics, "llm_inflight_requests") == 1


def test_config_reload_metrics() -> None:
    metrics = make_metrics()
    metrics.count_reload(True, at=1234.0)
    metrics.set_config(["gpt-4o"], "cd" * 32, 2)
    metrics.count_reload(False, at=1240.0)

    assert value(metrics, "truckllm_config_reloads_total", result="success") == 1
    assert value(metrics, "truckllm_config_reloads_total", result="error") == 1
    assert value(metrics, "truckllm_config_version") == 2
    assert value(metrics, "truckllm_config_info", sha256="cd" * 32) == 1
    assert not [s for s in samples(metrics) if s.labels.get("sha256") == "ab" * 32]
    assert value(metrics, "truckllm_config_last_reload_success") == 0
    assert value(metrics, "truckllm_config_last_reload_timestamp_seconds") == 1240.0


def test_registries_are_private() -> None:
    first, second = make_metrics(), make_metrics()
    first.observe(make_record())
    assert not [s for s in samples(second) if s.name == "llm_requests_total"]


ROOT = Path(__file__).resolve().parents[2]


def exposed_names() -> set[str]:
    metrics = make_metrics()
    metrics.observe(make_record(ttft_s=0.1))
    metrics.count_upstream_error("openai", "main", "500")
    metrics.count_rate_limited("team-a", "key_rpm")
    metrics.set_upstream_health([("openai", "", "healthy"), ("openai", "main", "degraded")])
    return {s.name for s in samples(metrics)}


def test_every_dashboard_query_uses_metrics_that_exist() -> None:
    dashboard = orjson.loads((ROOT / "docs" / "grafana" / "truckllm.json").read_bytes())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {name for expr in exprs for name in re.findall(r"\b((?:llm|truckllm)_[a-z_]+)\b", expr)}
    assert used and used <= exposed_names(), used - exposed_names()


def test_the_dashboard_shows_upstream_health_and_client_keys() -> None:
    dashboard = orjson.loads((ROOT / "docs" / "grafana" / "truckllm.json").read_bytes())
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    assert any("llm_upstream_status" in expr for expr in exprs.values())
    per_key = [title for title, expr in exprs.items()
               if "llm_key_requests_total" in expr and "llm_key_tokens_total" in expr]
    assert per_key
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_requests_and_tokens_are_counted_per_client_key() -> None:
    metrics = make_metrics()
    metrics.observe(make_record())
    metrics.observe(make_record(status=429, usage=None, provider_id=None))
    metrics.observe(make_record(key_id="team-b", usage=Usage(prompt_tokens=7, completion_tokens=1)))
    assert value(metrics, "llm_key_requests_total", key="team-a", status="200") == 1
    assert value(metrics, "llm_key_requests_total", key="team-a", status="429") == 1
    assert value(metrics, "llm_key_tokens_total", key="team-a", kind="prompt") == 10
    assert value(metrics, "llm_key_tokens_total", key="team-a", kind="completion") == 5
    assert value(metrics, "llm_key_tokens_total", key="team-b", kind="prompt") == 7


def test_operations_doc_names_every_metric() -> None:
    reference = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`((?:llm|truckllm)_[a-z_]+)`", reference))
    suffix = {"counter": "_total", "info": "_info"}
    names = {m.name + suffix.get(m.type, "") for m in make_metrics().registry.collect()}
    assert names - documented == set()


def test_upstream_failures_of_a_record_are_counted() -> None:
    metrics = make_metrics()
    metrics.observe(make_record(attempts=3, upstream_failures=(
        UpstreamFailure("openai", "main", "429"), UpstreamFailure("openai", "backup", "timeout"))))
    assert value(metrics, "llm_upstream_errors_total", provider="openai", key="main", reason="429") == 1
    assert value(metrics, "llm_upstream_errors_total", provider="openai", key="backup", reason="timeout") == 1


def test_plain_series_expose_what_prometheus_client_would() -> None:
    """The per-request metrics are plain numbers; their exposition must be prometheus-client's
    (names, labels, types, HELP, sample order), `_created` values aside."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = PlainCounter("x_total", "Doc.", ["a"], ours)
    labelled = PlainHistogram("h_seconds", "Doc.", ["a"], (0.1, 1), ours)
    unlabelled = PlainHistogram("p_seconds", "Doc.", (), (0.5,), ours)
    their_counter = Counter("x_total", "Doc.", ["a"], registry=theirs)
    their_labelled = Histogram("h_seconds", "Doc.", ["a"], buckets=(0.1, 1), registry=theirs)
    their_unlabelled = Histogram("p_seconds", "Doc.", buckets=(0.5,), registry=theirs)
    for label, amount in [("u", 0.05), ("v", 0.1), ("u", 3.0), ("u", 1.0), ("v", 0)]:
        counter.inc((label,), amount)
        their_counter.labels(label).inc(amount)
        labelled.observe((label,), amount)
        their_labelled.labels(label).observe(amount)
        unlabelled.observe((), amount)
        their_unlabelled.observe(amount)

    def text(registry: CollectorRegistry) -> str:
        return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())

    assert "_created" in text(ours)
    assert text(ours) == text(theirs)


def test_a_wildcard_anywhere_labels_its_requests_with_the_alias() -> None:
    labels = AliasLabels(["claude-*", "claude-sonnet-*", "*-fast", "gpt-4o"])
    assert [labels.label(m) for m in ("claude-sonnet-4-5-20250929", "claude-haiku-4-5", "o3-fast",
                                      "gpt-4o", "other")] == [
        "claude-sonnet-*", "claude-*", "*-fast", "gpt-4o", ""]
