"""The operating side of the app: metrics, request log, redaction and
the reloader, built once per process and kept current by the reload hook.

Owns what happens after a config is applied (resize, re-key, re-redact, drop vanished
ids) and the reloader's lifetime as a cleanup context. No request handling here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from truckllm.config.loader import LoadedConfig
from truckllm.config.redaction import secret_values
from truckllm.observe.access_log import AccessLog
from truckllm.observe.history import History
from truckllm.observe.log import configure_logging
from truckllm.observe.metrics import Metrics
from truckllm.observe.redaction import SecretRedactor
from truckllm.observe.request_log import RequestLog
from truckllm.observe.traces import Tracing
from truckllm.pipeline.record import RequestRecord
from truckllm.pipeline.transport import Transport
from truckllm.runtime.reloader import Reloader, ReloadResult
from truckllm.runtime.state import State, StateHolder, build_state
from truckllm.server.peers import Peers

_LOG_SETTINGS = ("log_level", "log_format")


@dataclass(slots=True)
class InFlight:
    """Requests in progress (client traffic only: scrapes and admin calls are left out),
    for the in-flight gauge and the shutdown log line."""

    count: int = 0


@dataclass(slots=True)
class Ops:
    holder: StateHolder
    metrics: Metrics
    request_log: RequestLog
    redactor: SecretRedactor
    reloader: Reloader[State]
    inflight: InFlight
    started_with: LoadedConfig      # listener settings come from here until a restart
    started_at: float
    access_log: AccessLog = field(default_factory=AccessLog)
    history: History = field(default_factory=History)     # the console's charts
    tracing: Tracing = field(default_factory=Tracing)     # follows server.otel
    log_stream: TextIO | None = None    # where log lines go; None: stderr
    # Where rate windows, slots, usage and spend live, and whether it is reachable.
    state_backend: Callable[[], dict[str, Any]] = lambda: {"backend": "memory", "up": True}
    # --workers: the other workers, asked for their part of /metrics and the admin API
    # (None: one process)
    worker_peers: Peers | None = None
    worker_index: int | None = None

    # What every finished request's record is given to: one list, refilled in place by
    # `follow_config`, so that whoever holds it (the request wrapper) sees the change.
    observers: list[Callable[[RequestRecord], None]] = field(default_factory=list)

    def follow_config(self) -> None:
        """The observers the config in use needs. The request metrics are read only on
        GET /metrics, the request log and the console's history only through the admin
        API: while those are off (`metrics: false`, no `admin_api_key`) no request pays for
        them, and they hold the traffic from when they were turned on."""
        server = self.holder.current.config.server
        wanted = [self.access_log.write]
        if server.metrics:
            wanted.append(self.metrics.observe)
        admin_key = server.admin_api_key
        if admin_key is not None and admin_key.get_secret_value():
            wanted += (self.request_log.add, self.history.observe)
        self.observers[:] = wanted

    def configure_logging(self, stream: TextIO | None = None) -> None:
        """Apply the config's log settings; `stream` (tests) stays in use across reloads."""
        if stream is not None:
            self.log_stream = stream
        server = self.holder.current.config.server
        configure_logging(server.log_level, server.log_format, self.redactor, self.log_stream,
                          self.access_log)


def make_ops(holder: StateHolder, inflight: InFlight, transport: Transport) -> Ops:
    loaded = holder.current.loaded
    metrics = Metrics()
    metrics.inflight.set_function(lambda: inflight.count)
    reloader = Reloader[State](Path(loaded.source), loaded, holder, build_state, metrics,
                               version=holder.current.version)
    ops = Ops(holder, metrics, RequestLog(loaded.config.server.request_log_size),
              SecretRedactor(secret_values(loaded)), reloader, inflight, loaded, time.time())

    def applied(new: LoadedConfig, result: ReloadResult) -> None:
        ops.request_log.resize(new.config.server.request_log_size)
        ops.redactor.update(secret_values(new))
        transport.retain(p.id for p in new.config.providers)
        if result.changes is not None and set(_LOG_SETTINGS) & set(result.changes.server):
            ops.configure_logging()
        ops.tracing.configure(new.config.server.otel)
        ops.follow_config()

    reloader.on_applied = (applied,)
    ops.tracing.configure(loaded.config.server.otel)
    ops.follow_config()
    return ops


async def run_reloader(ops: Ops) -> AsyncIterator[None]:
    """Cleanup context body: file watcher and SIGHUP worker live as long as the app."""
    ops.reloader.start()
    try:
        yield
    finally:
        await ops.reloader.stop()
        await asyncio.to_thread(ops.tracing.shutdown)     # flushes the last spans
