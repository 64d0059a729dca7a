"""The last hour of traffic, second by second, in memory: for the console's charts.

Per second in which a request finished: requests, server errors (5xx), client errors
(4xx), latency p50/p95, tokens and cost. A fixed ring of one slot per second of the last
hour, so memory stays bounded whatever the traffic; latencies of a second are sampled
(at most SAMPLES_PER_SECOND kept) until the second is over, then only its quantiles are.
Fed from RequestRecords on the event loop; read by GET /admin/v1/history. Must not import
the server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from truckllm.pipeline.record import RequestRecord

SECONDS = 3600
SAMPLES_PER_SECOND = 2048


class _Second:
    __slots__ = ("client_errors", "cost_usd", "errors", "latencies", "p50_s", "p95_s",
                 "requests", "second", "seen", "tokens")

    def __init__(self, second: int) -> None:
        self.second = second
        self.requests = self.errors = self.client_errors = self.tokens = self.seen = 0
        self.cost_usd = 0.0
        self.latencies: list[float] | None = []     # None once summed up in p50_s/p95_s
        self.p50_s = self.p95_s = 0.0

    def close(self) -> None:
        if self.latencies is not None:
            ordered = sorted(self.latencies)
            if ordered:
                self.p50_s = ordered[(len(ordered) - 1) // 2]
                self.p95_s = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
            self.latencies = None


class History:
    """One slot per second of the last `SECONDS`; old slots are reused in place."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._slots: list[_Second | None] = [None] * SECONDS
        self._clock = clock
        self._random = random.Random()

    def observe(self, record: RequestRecord) -> None:
        second = int(record.timestamp + record.latency_s)
        index = second % SECONDS
        slot = self._slots[index]
        if slot is None or slot.second != second:
            if slot is not None and slot.second > second:
                return                                  # older than an hour: not kept
            slot = self._slots[index] = _Second(second)
        slot.requests += 1
        status = record.status
        if status >= 500:
            slot.errors += 1
        elif status >= 400:
            slot.client_errors += 1
        usage = record.usage
        if usage is not None:
            slot.tokens += usage.total_tokens
        if record.cost_usd:
            slot.cost_usd += record.cost_usd
        latencies = slot.latencies
        if latencies is None:       # a straggler for a second already summed up
            return
        slot.seen += 1
        if len(latencies) < SAMPLES_PER_SECOND:
            latencies.append(record.latency_s)
        else:                       # reservoir sampling: every latency equally likely kept
            pick = self._random.randrange(slot.seen)
            if pick < SAMPLES_PER_SECOND:
                latencies[pick] = record.latency_s

    def report(self, since: int | None = None) -> dict[str, Any]:
        """The seconds after `since` (all of the last hour when None), oldest first; a
        second without a finished request is left out."""
        now = int(self._clock())
        oldest = now - SECONDS + 1
        start = oldest if since is None else max(oldest, since + 1)
        seconds = sorted((slot for slot in self._slots
                          if slot is not None and start <= slot.second <= now),
                         key=lambda slot: slot.second)
        columns: dict[str, list[Any]] = {name: [] for name in (
            "t", "requests", "errors", "client_errors", "p50_ms", "p95_ms", "tokens", "cost_usd")}
        for slot in seconds:
            if slot.second < now:
                slot.close()
                p50, p95 = slot.p50_s, slot.p95_s
            else:                   # the current second, still open: quantiles so far
                current = _Second(slot.second)
                current.latencies = list(slot.latencies or ())
                current.close()
                p50, p95 = current.p50_s, current.p95_s
            columns["t"].append(slot.second)
            columns["requests"].append(slot.requests)
            columns["errors"].append(slot.errors)
            columns["client_errors"].append(slot.client_errors)
            columns["p50_ms"].append(round(p50 * 1000, 3))
            columns["p95_ms"].append(round(p95 * 1000, 3))
            columns["tokens"].append(slot.tokens)
            columns["cost_usd"].append(round(slot.cost_usd, 9))
        return {"now": now, "interval_s": 1, "window_s": SECONDS, "series": columns}
