"""What happened to one request: filled in as it goes (Exchange), then finished into a
RequestRecord that logs, metrics and the admin log buffer consume. No prompt text here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from truckllm.usage import Usage

if TYPE_CHECKING:
    from truckllm.limits.cost import CostLine
    from truckllm.limits.limiter import LimitScope


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """One failed upstream attempt: which provider and key, and why (a fixed short word)."""

    provider_id: str
    key_id: str
    reason: str             # an HTTP status such as "429", or "timeout", "connect", "stream"


@dataclass(slots=True, init=False)
class RequestRecord:
    """The finished request, taken from its Exchange; observers read it by field name and
    never change it.

    Made from the Exchange itself rather than from a keyword per field: binding two dozen
    keyword arguments costs more than the rest of making it (the measurement is in
    docs/dev/performance-notes.md). Not frozen for the same reason: a frozen dataclass
    sets each field through object.__setattr__."""

    timestamp: float                 # unix seconds when the request arrived
    request_id: str
    client_request_id: bool          # request_id is the client's X-Request-ID, not made here
    method: str
    path: str
    key_id: str | None
    alias: str | None                # the config alias that matched (bounded label set)
    provider_id: str | None
    upstream_model: str | None
    status: int
    latency_s: float
    overhead_s: float                # time spent in TruckLLM itself, excluding upstream
    ttft_s: float | None             # streams: time to the first chunk sent
    usage: Usage | None
    attempts: int
    cost_usd: float | None
    error_reason: str | None
    stream: bool
    upstream_key_id: str | None             # upstream key of the last attempt
    upstream_failures: tuple[UpstreamFailure, ...]   # every failed attempt, in order
    cost_lines: tuple[CostLine, ...]        # what cost_usd came from: tokens by kind x rate
    usage_estimated: bool                   # a stream cut short: usage estimated, not reported
    limit_scope: LimitScope | None          # refused by a rate limit: whose
    dropped_tools: tuple[str, ...]          # tools the translation left out, by type

    def __init__(self, exchange: Exchange, status: int, now: float) -> None:
        """The record of `exchange` ending with `status` at `now` (time.perf_counter)."""
        self.timestamp = exchange.started_wall
        self.request_id = exchange.request_id
        self.client_request_id = exchange.client_request_id
        self.method = exchange.method
        self.path = exchange.path
        self.key_id = exchange.key_id
        self.alias = exchange.alias
        self.provider_id = exchange.provider_id
        self.upstream_model = exchange.upstream_model
        self.status = status
        self.latency_s = now - exchange.started
        self.overhead_s = exchange.overhead_s(now)
        self.ttft_s = exchange.ttft_s
        self.usage = exchange.usage
        self.attempts = exchange.attempts
        self.cost_usd = exchange.cost_usd
        self.error_reason = exchange.error_reason
        self.stream = exchange.stream
        self.upstream_key_id = exchange.upstream_key_id
        self.upstream_failures = tuple(exchange.upstream_failures)
        self.cost_lines = exchange.cost_lines
        self.usage_estimated = exchange.usage_estimated
        self.limit_scope = exchange.limit_scope
        self.dropped_tools = exchange.dropped_tools

    @property
    def level(self) -> str:
        if self.status >= 500:
            return "error"
        return "warning" if self.status >= 400 else "info"


class TraceHook(Protocol):
    """The trace of one request (truckllm.observe.traces), told of its upstream attempts.
    Set on the Exchange only when tracing is configured."""

    def attempt_began(self, op: str, provider_id: str, provider_type: str, model: str,
                      key_id: str) -> None: ...
    def upstream_headers(self) -> dict[str, str]: ...     # traceparent for the attempt
    def attempt_failed(self, reason: str) -> None: ...
    def finish(self, record: RequestRecord) -> None: ...


class Exchange:
    """The mutable progress of one request, owned by that request alone."""

    __slots__ = ("alias", "attempts", "client_request_id", "cost_lines", "cost_usd", "dropped_tools", "error_reason", "key_id", "limit_scope",
                 "method", "path", "provider_id", "ratelimit_reader", "request_id", "started",
                 "started_wall", "status", "stream", "trace", "ttft_s", "upstream_failures",
                 "upstream_key_id", "upstream_model", "upstream_s", "usage", "usage_estimated")

    def __init__(self, request_id: str, method: str, path: str,
                 client_request_id: bool = False) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id      # given by the client: scanned in logs
        self.method = method
        self.path = path
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.key_id: str | None = None
        self.alias: str | None = None
        self.provider_id: str | None = None
        self.upstream_model: str | None = None
        self.attempts = 0
        self.upstream_s = 0.0            # time spent waiting on upstream
        self.ttft_s: float | None = None
        self.usage: Usage | None = None
        self.usage_estimated = False     # a stream cut short: usage estimated, not reported
        self.cost_usd: float | None = None
        self.cost_lines: tuple[CostLine, ...] = ()
        self.error_reason: str | None = None
        self.limit_scope: LimitScope | None = None
        self.dropped_tools: tuple[str, ...] = ()    # left out by the attempt that answered
        self.status = 0
        self.stream = False
        self.upstream_key_id: str | None = None
        self.upstream_failures: list[UpstreamFailure] = []
        # () -> the client key's x-ratelimit-* headers as they stand when called; set at
        # auth for a key that sends them, for its responses. Not part of the record.
        self.ratelimit_reader: Callable[[], dict[str, str]] | None = None
        self.trace: TraceHook | None = None     # tracing configured: this request's spans

    def overhead_s(self, now: float | None = None) -> float:
        overhead = (time.perf_counter() if now is None else now) - self.started - self.upstream_s
        return overhead if overhead > 0.0 else 0.0

    def finish(self, status: int) -> RequestRecord:
        self.status = status
        return RequestRecord(self, status, time.perf_counter())
