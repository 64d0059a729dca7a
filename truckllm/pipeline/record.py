"""What happened to one request: filled in as it goes (Exchange), then frozen into a
RequestRecord that logs, metrics and the admin log buffer consume. No prompt text here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

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


class RequestRecord(NamedTuple):
    """The finished request, immutable. A NamedTuple rather than a frozen dataclass: one is
    built per request, and a frozen dataclass assigns its 21 fields one object.__setattr__
    at a time (several µs); a tuple is filled in one C call."""

    timestamp: float                 # unix seconds when the request arrived
    request_id: str
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
    upstream_key_id: str | None = None      # upstream key of the last attempt
    upstream_failures: tuple[UpstreamFailure, ...] = ()   # every failed attempt, in order
    cost_lines: tuple[CostLine, ...] = ()   # what cost_usd came from: tokens by kind x rate
    usage_estimated: bool = False           # a stream cut short: usage estimated, not reported
    limit_scope: LimitScope | None = None   # refused by a rate limit: whose

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

    __slots__ = ("alias", "attempts", "cost_lines", "cost_usd", "error_reason", "key_id", "limit_scope",
                 "method", "path", "provider_id", "ratelimit_headers", "request_id", "started",
                 "started_wall", "status", "stream", "trace", "ttft_s", "upstream_failures",
                 "upstream_key_id", "upstream_model", "upstream_s", "usage", "usage_estimated")

    def __init__(self, request_id: str, method: str, path: str) -> None:
        self.request_id = request_id
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
        self.status = 0
        self.stream = False
        self.upstream_key_id: str | None = None
        self.upstream_failures: list[UpstreamFailure] = []
        # () -> the client key's x-ratelimit-* headers as they stand when called; set at
        # auth for a key that sends them, for its responses. Not part of the record.
        self.ratelimit_headers: Callable[[], dict[str, str]] | None = None
        self.trace: TraceHook | None = None     # tracing configured: this request's spans

    def overhead_s(self, now: float | None = None) -> float:
        overhead = (time.perf_counter() if now is None else now) - self.started - self.upstream_s
        return overhead if overhead > 0.0 else 0.0      # not max(): a builtin call costs more

    def finish(self, status: int) -> RequestRecord:
        now = time.perf_counter()
        self.status = status
        # The tuple is filled directly, in RequestRecord's field order: the NamedTuple's
        # generated __new__ is a Python function doing only this, and costs twice as much
        # again with its 21 arguments bound by keyword.
        return tuple.__new__(RequestRecord, (
            self.started_wall, self.request_id, self.method, self.path, self.key_id, self.alias,
            self.provider_id, self.upstream_model, status, now - self.started,
            self.overhead_s(now), self.ttft_s, self.usage, self.attempts, self.cost_usd,
            self.error_reason, self.stream, self.upstream_key_id, tuple(self.upstream_failures),
            self.cost_lines, self.usage_estimated, self.limit_scope))
