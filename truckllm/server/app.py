"""create_app(): the aiohttp application, its routes, middleware and owned resources."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from truckllm.limits import Clock, Limiter
from truckllm.log import log_access
from truckllm.probes import run_probes
from truckllm.router import Routing
from truckllm.server import admin_keys, openai_routes
from truckllm.server.keys import (
    INFLIGHT,
    LIMITER,
    OBSERVERS,
    ROUTING,
    STATE,
    TRANSPORT,
    RecordObserver,
)
from truckllm.server.metering import save_state
from truckllm.server.middleware import gateway_middleware
from truckllm.state import StateHolder
from truckllm.transport import Transport

# Body size is enforced per config snapshot in server.validation, so a reload can change
# it; aiohttp's own ceiling only has to stay out of the way.
_AIOHTTP_BODY_CEILING = 1 << 40


def create_app(holder: StateHolder, *, clock: Clock | None = None) -> web.Application:
    """`clock` is for tests that move time (rate windows, budget periods) without sleeping."""
    app = web.Application(middlewares=[gateway_middleware], client_max_size=_AIOHTTP_BODY_CEILING)
    app[STATE] = holder
    app[TRANSPORT] = Transport()
    observers: list[RecordObserver] = [log_access]
    app[OBSERVERS] = observers
    app[INFLIGHT] = [0]
    app[ROUTING] = Routing()
    app[LIMITER] = Limiter(clock)
    app[LIMITER].adopt(holder.current.limits)
    openai_routes.add_routes(app)
    admin_keys.add_routes(app)
    app.cleanup_ctx.append(_close_transport)
    app.cleanup_ctx.append(_health_checks)
    app.cleanup_ctx.append(save_state)
    return app


async def _close_transport(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[TRANSPORT].close()


async def _health_checks(app: web.Application) -> AsyncIterator[None]:
    """Active probes for providers with `health_check_interval_s` (free endpoints only)."""
    holder, health = app[STATE], app[ROUTING].health
    task = asyncio.create_task(run_probes(lambda: holder.current, app[TRANSPORT], health))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
