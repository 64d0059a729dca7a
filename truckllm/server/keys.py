"""Every typed key the aiohttp app carries, in one place."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from truckllm.limits import Limiter
from truckllm.records import RequestRecord
from truckllm.router import Routing
from truckllm.server.ops import Ops
from truckllm.state import StateHolder
from truckllm.transport import Transport

RecordObserver = Callable[[RequestRecord], None]

STATE = web.AppKey("state", StateHolder)
TRANSPORT = web.AppKey("transport", Transport)
OBSERVERS = web.AppKey("observers", list[RecordObserver])
ROUTING = web.AppKey("routing", Routing)           # health, cursors: survive reloads
INFLIGHT = web.AppKey("inflight", list[int])       # one mutable counter: requests in progress
OPS = web.AppKey("ops", Ops)                        # metrics, request log, reloader, admin API
LIMITER = web.AppKey("limiter", Limiter)           # rate windows, budgets, usage; survives reloads
