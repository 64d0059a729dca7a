"""create_app(): the aiohttp application, its routes, middleware and owned resources."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from truckllm.log import log_access
from truckllm.server import openai_routes
from truckllm.server.keys import INFLIGHT, OBSERVERS, STATE, TRANSPORT, RecordObserver
from truckllm.server.middleware import gateway_middleware
from truckllm.state import StateHolder
from truckllm.transport import Transport

# Body size is enforced per config snapshot in server.validation, so a reload can change
# it; aiohttp's own ceiling only has to stay out of the way.
_AIOHTTP_BODY_CEILING = 1 << 40


def create_app(holder: StateHolder) -> web.Application:
    app = web.Application(middlewares=[gateway_middleware], client_max_size=_AIOHTTP_BODY_CEILING)
    app[STATE] = holder
    app[TRANSPORT] = Transport()
    observers: list[RecordObserver] = [log_access]
    app[OBSERVERS] = observers
    app[INFLIGHT] = [0]
    openai_routes.add_routes(app)
    app.cleanup_ctx.append(_close_transport)
    return app


async def _close_transport(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[TRANSPORT].close()
