"""Every typed key the aiohttp app and its requests carry, in one place."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from truckllm.records import Exchange, RequestRecord
from truckllm.state import StateHolder
from truckllm.transport import Transport

RecordObserver = Callable[[RequestRecord], None]

STATE = web.AppKey("state", StateHolder)
TRANSPORT = web.AppKey("transport", Transport)
OBSERVERS = web.AppKey("observers", list[RecordObserver])
INFLIGHT = web.AppKey("inflight", list[int])       # one mutable counter: requests in progress

# Per-request key: aiohttp requests take string keys.
EXCHANGE = "truckllm.exchange"


def exchange_of(request: web.Request) -> Exchange:
    exchange: Exchange = request[EXCHANGE]
    return exchange
