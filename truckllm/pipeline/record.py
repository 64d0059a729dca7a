"""What happened to one request: filled in as it goes (Exchange), then finished: the
RequestRecord that logs, metrics and the admin log buffer consume. No prompt text here."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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


class TraceHook(Protocol):
    """The trace of one request (truckllm.observe.traces), told of its upstream attempts.
    Set on the Exchange only when tracing is configured."""

    def attempt_began(self, op: str, provider_id: str, provider_type: str, model: str,
                      key_id: str) -> None: ...
    def upstream_headers(self) -> dict[str, str]: ...     # traceparent for the attempt
    def attempt_failed(self, reason: str) -> None: ...
    def finish(self, record: RequestRecord) -> None: ...


class Exchange:
    """The mutable progress of one request, owned by that request alone; once `finish`ed,
    the request's record (RequestRecord), which observers read by field name and never
    change.

    The finished request is this object rather than a copy of its fields into another:
    copying two dozen fields cost more than the rest of finishing a request (the
    measurements are in docs/dev/performance-notes.md)."""

    __slots__ = ("alias", "attempts", "client_request_id", "cost_lines", "cost_usd", "dropped_tools",
                 "error_reason", "key_id", "latency_s", "limit_scope", "method", "overhead_s", "path",
                 "provider_id", "ratelimit_reader", "request_id", "started", "started_wall", "status",
                 "stream", "timestamp", "trace", "ttft_s", "upstream_failures", "upstream_key_id",
                 "upstream_model", "upstream_s", "usage", "usage_estimated")

    # Set by `finish`: the record's own fields.
    timestamp: float                 # unix seconds when the request arrived
    latency_s: float
    overhead_s: float                # time spent in TruckLLM itself, excluding upstream

    def __init__(self, request_id: str, method: str, path: str,
                 client_request_id: bool = False) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id      # given by the client: scanned in logs
        self.method = method
        self.path = path
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.key_id: str | None = None
        self.alias: str | None = None                   # the config alias that matched
        self.provider_id: str | None = None
        self.upstream_model: str | None = None
        self.attempts = 0
        self.upstream_s = 0.0            # time spent waiting on upstream
        self.ttft_s: float | None = None                # streams: time to the first chunk sent
        self.usage: Usage | None = None
        self.usage_estimated = False     # a stream cut short: usage estimated, not reported
        self.cost_usd: float | None = None
        self.cost_lines: tuple[CostLine, ...] = ()      # what cost_usd came from
        self.error_reason: str | None = None
        self.limit_scope: LimitScope | None = None      # refused by a rate limit: whose
        self.dropped_tools: tuple[str, ...] = ()    # left out by the attempt that answered
        self.status = 0
        self.stream = False
        self.upstream_key_id: str | None = None         # upstream key of the last attempt
        # Every failed attempt, in order (add_failure); a tuple once finished.
        self.upstream_failures: Sequence[UpstreamFailure] = []
        # () -> the client key's x-ratelimit-* headers as they stand when called; set at
        # auth for a key that sends them, for its responses. Not part of the record.
        self.ratelimit_reader: Callable[[], dict[str, str]] | None = None
        self.trace: TraceHook | None = None     # tracing configured: this request's spans

    def add_failure(self, failure: UpstreamFailure) -> None:
        """An upstream attempt failed (rarely: the list is made anew)."""
        self.upstream_failures = [*self.upstream_failures, failure]

    def overhead_so_far(self, now: float | None = None) -> float:
        """Seconds spent in TruckLLM itself until `now` (time.perf_counter), upstream excluded."""
        overhead = (time.perf_counter() if now is None else now) - self.started - self.upstream_s
        return overhead if overhead > 0.0 else 0.0

    def finish(self, status: int) -> RequestRecord:
        """The record of this request, ending now with `status`."""
        now = time.perf_counter()
        self.status = status
        self.timestamp = self.started_wall
        self.latency_s = now - self.started
        overhead = now - self.started - self.upstream_s
        self.overhead_s = overhead if overhead > 0.0 else 0.0
        self.upstream_failures = tuple(self.upstream_failures)
        return self

    @property
    def level(self) -> str:
        if self.status >= 500:
            return "error"
        return "warning" if self.status >= 400 else "info"


# A finished Exchange, as the observers (access line, metrics, request log, history,
# traces) receive it.
RequestRecord = Exchange
