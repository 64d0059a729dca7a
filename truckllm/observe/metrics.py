"""Prometheus metrics on a private CollectorRegistry, fed from RequestRecords.

Owns the metric objects and the rule that every label value comes from the config (ids
and aliases), so cardinality stays bounded and no secret or raw user string becomes a
label. Must not import the server or dispatch; they call into this module.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from truckllm import __version__
from truckllm.config.globs import AliasPattern, by_specificity, is_wildcard
from truckllm.pipeline.record import RequestRecord

# Whole requests and first tokens of LLM calls run from tens of milliseconds to minutes.
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
# The gateway's own share should be well under a millisecond; the tail shows trouble.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

UNKNOWN = ""            # label value for a model or key the config does not name
UPSTREAM_STATUSES = ("healthy", "degraded", "down")


class AliasLabels:
    """Maps what a client asked for onto a configured alias, or UNKNOWN."""

    def __init__(self, aliases: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        patterns: list[AliasPattern] = []
        for alias in aliases:
            if is_wildcard(alias):
                patterns.append(AliasPattern(alias))
            else:
                exact.add(alias)
        self._exact = frozenset(exact)
        self._patterns = tuple(by_specificity(patterns))     # as routing chooses

    def label(self, requested: str | None) -> str:
        if requested is None:
            return UNKNOWN
        if requested in self._exact:
            return requested
        for pattern in self._patterns:
            if pattern.match(requested) is not None:
                return pattern.alias
        return UNKNOWN


Labels = tuple[str, ...]     # label values, in the order of the metric's label names


# The metrics fed on every request are plain numbers rendered on scrape, as custom
# collectors: prometheus-client's Counter and Histogram check arguments and take a lock on
# every inc()/observe(), which buys thread safety that nothing here needs: records are
# observed and /metrics is rendered on the event loop. They expose the same samples as
# prometheus-client's own, in the same order: `_total` and `_created` for a counter;
# `_bucket`s, `_count`, `_sum` and `_created` for a histogram (`_created` unless
# PROMETHEUS_DISABLE_CREATED_SERIES is set, read as prometheus-client reads it).
_CREATED_SERIES = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
    "true", "1", "t")
class PlainCounter:
    """A labelled counter, registered on `registry`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self._family = (name, documentation, tuple(labelnames))
        self._series: dict[Labels, list[float]] = {}        # labels -> [value, created]
        registry.register(self)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.series(labels)[0] += amount

    def series(self, labels: Labels) -> list[float]:
        """[value, created] of these labels, created at first use (and exposed from then)."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0, time.time()]
        return series

    def collect(self) -> Iterator[CounterMetricFamily]:
        name, documentation, labelnames = self._family
        family = CounterMetricFamily(name, documentation, labels=labelnames)
        for labels, (value, created) in self._series.items():
            family.add_metric(labels, value, created=created if _CREATED_SERIES else None)
        yield family


class PlainHistogram:
    """A histogram, labelled or not (then its one series exists from the start, as in
    prometheus-client), registered on `registry`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._family = (name, documentation, tuple(labelnames))
        self.bounds = (*map(float, buckets), float("inf"))
        self._le = tuple(map(floatToGoString, self.bounds))
        # labels -> [sum, created, count in bucket 0, 1, ..., +Inf]; counts not cumulative
        # (made cumulative on scrape), and ints, as counts are
        self._series: dict[Labels, list[float]] = {}
        if not labelnames:
            self.series(())
        registry.register(self)

    def observe(self, labels: Labels, amount: float) -> None:
        add_observation(self.series(labels), self.bounds, amount)

    def series(self, labels: Labels) -> list[float]:
        """[sum, created, count per bucket] of these labels, created at first use."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0, time.time(), *[0] * len(self.bounds)]
        return series

    def collect(self) -> Iterator[HistogramMetricFamily]:
        name, documentation, labelnames = self._family
        family = HistogramMetricFamily(name, documentation, labels=labelnames)
        for labels, series in self._series.items():
            cumulative, total = [], 0.0
            for le, count in zip(self._le, series[2:], strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(labels, cumulative, series[0])
            if _CREATED_SERIES:
                family.add_sample(name + "_created", dict(zip(labelnames, labels, strict=True)),
                                  series[1])
        yield family


def add_observation(series: list[float], bounds: tuple[float, ...], amount: float) -> None:
    """One observation into a histogram's series (`PlainHistogram.series`) with `bounds`."""
    series[0] += amount
    series[2 + bisect_left(bounds, amount)] += 1     # first bound >= amount


class RequestSeries:
    """The series that the records of one (provider, alias, status, client key) feed, found
    once per config (see `Metrics.observe`). Those of first tokens, tokens and cost are
    created when first fed, as prometheus-client would: a series is exposed from then on."""

    __slots__ = ("cost", "cost_labels", "duration", "key_requests", "labels", "requests",
                 "tokens", "ttft")

    def __init__(self, metrics: Metrics, provider: str, model: str, status: int,
                 key: str) -> None:
        self.labels = (provider, model)
        self.cost_labels = (model, key)
        self.requests = metrics.requests.series((provider, model, str(status)))
        self.key_requests = metrics.key_requests.series((key, str(status)))
        self.duration = metrics.duration.series(self.labels)
        self.ttft: list[float] | None = None
        # prompt, completion (by provider and model), prompt, completion (by client key)
        self.tokens: tuple[list[float], list[float], list[float], list[float]] | None = None
        self.cost: list[float] | None = None


# Records are labelled by (provider, alias, status, client key): config ids, a status code
# and the matched config alias, so few combinations exist. Forgetting them all past this
# many keeps memory bounded whatever records arrive.
_REMEMBERED_SERIES = 4096


class Metrics:
    """Every metric of SPEC §7, registered on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._aliases = AliasLabels()
        self._series: dict[tuple[str | None, str | None, int, str | None], RequestSeries] = {}
        # Label sets are bounded: every label value comes from the config or a small fixed set.
        r = self.registry
        self.requests = PlainCounter("llm_requests_total", "Requests answered, by HTTP status sent.",
                                     ["provider", "model", "status"], r)
        self.duration = PlainHistogram("llm_request_duration_seconds",
                                       "Arrival to last byte sent, upstream included.",
                                       ["provider", "model"], REQUEST_BUCKETS, r)
        self.ttft = PlainHistogram("llm_time_to_first_token_seconds",
                                   "Streams: arrival to the first chunk sent to the client.",
                                   ["provider", "model"], TTFT_BUCKETS, r)
        self.tokens = PlainCounter("llm_tokens_total", "Tokens counted from upstream usage.",
                                   ["provider", "model", "kind"], r)
        self.key_requests = PlainCounter("llm_key_requests_total",
                                         "Requests answered per client key, by HTTP status sent.",
                                         ["key", "status"], r)
        self.key_tokens = PlainCounter("llm_key_tokens_total",
                                       "Tokens counted from upstream usage, per client key.",
                                       ["key", "kind"], r)
        self.cost = PlainCounter("llm_cost_usd_total", "Spend in USD from configured pricing.",
                                 ["model", "key"], r)
        self.upstream_errors = Counter("llm_upstream_errors_total",
                                       "Failed upstream attempts, by upstream key and reason.",
                                       ["provider", "key", "reason"], registry=r)
        self.rate_limited = Counter("llm_rate_limited_total",
                                    "Requests refused by a TruckLLM limit.",
                                    ["key", "scope"], registry=r)
        self.inflight = Gauge("llm_inflight_requests", "Requests and streams in progress.",
                              registry=r)
        self.overhead = PlainHistogram("llm_overhead_seconds",
                                       "Time spent in TruckLLM itself, upstream excluded.",
                                       (), OVERHEAD_BUCKETS, r)
        self._overhead = self.overhead.series(())
        self.reloads = Counter("truckllm_config_reloads_total",
                               "Config reloads that changed something or failed.",
                               ["result"], registry=r)
        self.config_version = Gauge("truckllm_config_version",
                                    "Number of the config in use; 1 at start, +1 per applied reload.",
                                    registry=r)
        self.config_info = Info("truckllm_config", "sha256 of the config file in use.",
                                registry=r)
        self.last_reload = Gauge("truckllm_config_last_reload_timestamp_seconds",
                                 "When the last reload attempt finished.", registry=r)
        self.last_reload_ok = Gauge("truckllm_config_last_reload_success",
                                    "1 when the last reload attempt was applied, 0 when it failed.",
                                    registry=r)
        self.upstream_status = Gauge(
            "llm_upstream_status",
            "Routing health: 1 for the current status of each upstream key, and of each "
            "provider as a whole (key \"\").", ["provider", "key", "status"], registry=r)
        self.state_backend_up = Gauge(
            "truckllm_state_backend_up",
            "1 while the state backend is reachable (always, for the in-memory one); 0 while "
            "the shared state server is down and limits are enforced per instance.", registry=r)
        self.state_backend_up.set(1)
        Info("truckllm_build", "TruckLLM version.", registry=r).info({"version": __version__})
        for result in ("success", "error"):
            self.reloads.labels(result=result)

    def set_upstream_health(self, statuses: Iterable[tuple[str, str, str]]) -> None:
        """(provider id, key id or "", healthy|degraded|down) for every configured key and
        provider, set at scrape time; ids gone from the config disappear."""
        self.upstream_status.clear()
        for provider, key, status in statuses:
            for name in UPSTREAM_STATUSES:
                self.upstream_status.labels(provider=provider, key=key, status=name).set(
                    1.0 if name == status else 0.0)

    def observe(self, record: RequestRecord) -> None:
        # Labelling a record (the model label of its alias, the status as text, the label
        # tuples) depends only on these four fields and the config's aliases: the series
        # they lead to are remembered per combination until the aliases change (set_config).
        key_id, alias, provider_id, status = (record.key_id, record.alias, record.provider_id,
                                              record.status)
        ttft_s, usage, cost_usd = record.ttft_s, record.usage, record.cost_usd
        series = (self._series.get((provider_id, alias, status, key_id))
                  or self._request_series(provider_id, alias, status, key_id))
        series.requests[0] += 1.0
        series.key_requests[0] += 1.0
        add_observation(series.duration, self.duration.bounds, record.latency_s)
        add_observation(self._overhead, self.overhead.bounds, record.overhead_s)
        if ttft_s is not None:
            add_observation(series.ttft or self._ttft_series(series), self.ttft.bounds, ttft_s)
        if usage is not None:
            prompt, completion, key_prompt, key_completion = (series.tokens
                                                              or self._token_series(series))
            prompt[0] += usage.prompt_tokens
            completion[0] += usage.completion_tokens
            key_prompt[0] += usage.prompt_tokens
            key_completion[0] += usage.completion_tokens
        if cost_usd:
            (series.cost or self._cost_series(series))[0] += cost_usd
        for failure in record.upstream_failures:
            self.count_upstream_error(failure.provider_id, failure.key_id, failure.reason)
        limit_scope = record.limit_scope
        if limit_scope is not None:
            self.count_rate_limited(key_id, limit_scope.value)
        elif status == 429 and provider_id is None:   # refused before upstream
            self.count_rate_limited(key_id, "limit")

    def _request_series(self, provider_id: str | None, alias: str | None, status: int,
                        key_id: str | None) -> RequestSeries:
        series = RequestSeries(self, provider_id or UNKNOWN, self._aliases.label(alias), status,
                               key_id or UNKNOWN)
        if len(self._series) >= _REMEMBERED_SERIES:
            self._series.clear()
        self._series[provider_id, alias, status, key_id] = series
        return series

    def _ttft_series(self, series: RequestSeries) -> list[float]:
        series.ttft = self.ttft.series(series.labels)
        return series.ttft

    def _token_series(self, series: RequestSeries) -> tuple[list[float], list[float],
                                                             list[float], list[float]]:
        provider, model = series.labels
        key = series.cost_labels[1]
        series.tokens = (self.tokens.series((provider, model, "prompt")),
                         self.tokens.series((provider, model, "completion")),
                         self.key_tokens.series((key, "prompt")),
                         self.key_tokens.series((key, "completion")))
        return series.tokens

    def _cost_series(self, series: RequestSeries) -> list[float]:
        series.cost = self.cost.series(series.cost_labels)
        return series.cost

    def count_upstream_error(self, provider_id: str, key_id: str, reason: str) -> None:
        """One failed upstream attempt; `reason` is a short fixed word (429, timeout, ...)."""
        self.upstream_errors.labels(provider=provider_id, key=key_id, reason=reason).inc()

    def count_rate_limited(self, key_id: str | None, scope: str) -> None:
        self.rate_limited.labels(key=key_id or UNKNOWN, scope=scope).inc()

    def set_config(self, aliases: Iterable[str], sha256: str, version: int) -> None:
        """The config now in use: its aliases bound the `model` label."""
        self._aliases = AliasLabels(aliases)
        self._series.clear()        # the model labels they were found with may differ now
        self.config_info.info({"sha256": sha256})
        self.config_version.set(version)

    def count_reload(self, ok: bool, at: float | None = None) -> None:
        self.reloads.labels(result="success" if ok else "error").inc()
        self.last_reload.set(time.time() if at is None else at)
        self.last_reload_ok.set(1 if ok else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
