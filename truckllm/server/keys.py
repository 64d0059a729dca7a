"""Every typed key the aiohttp app carries, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from truckllm.limits import Limiter
from truckllm.observe.traces import Tracing
from truckllm.pipeline.record import RequestRecord
from truckllm.pipeline.router import Routing
from truckllm.pipeline.transport import Transport
from truckllm.runtime.response_store import ResponseStore
from truckllm.runtime.state import StateHolder
from truckllm.server.ops import InFlight, Ops

if TYPE_CHECKING:
    from truckllm.limits.redis_link import StateLink
    from truckllm.runtime.config_sync import ConfigSync

RecordObserver = Callable[[RequestRecord], None]

STATE = web.AppKey("state", StateHolder)
TRANSPORT = web.AppKey("transport", Transport)
OBSERVERS = web.AppKey("observers", list[RecordObserver])
ROUTING = web.AppKey("routing", Routing)           # health, cursors: survive reloads
INFLIGHT = web.AppKey("inflight", InFlight)        # requests in progress
OPS = web.AppKey("ops", Ops)                        # metrics, request log, reloader, admin API
LIMITER = web.AppKey("limiter", Limiter)           # rate windows, budgets, usage; survives reloads
TRACING = web.AppKey("tracing", Tracing)           # OpenTelemetry spans; off unless server.otel
RESPONSE_STORE = web.AppKey("response_store", list[ResponseStore])   # [] when `off`
# Providers whose upstream answered 404 to /responses: translated through chat from then on.
RESPONSES_ENDPOINT_MISSING = web.AppKey("responses_endpoint_missing", set[str])
# Only with server.state_url; the Redis client is not even imported without it.
STATE_LINK: web.AppKey[StateLink] = web.AppKey("state_link")
CONFIG_SYNC: web.AppKey[ConfigSync] = web.AppKey("config_sync")
