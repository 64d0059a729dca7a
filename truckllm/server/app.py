"""create_app(): the aiohttp application, its routes, middleware and owned resources."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from truckllm.clock import Clock, SystemClock
from truckllm.config.loader import LoadedConfig
from truckllm.limits import Limiter
from truckllm.limits.clients import ClientStore
from truckllm.limits.upstream import MemoryUpstreamStore, UpstreamStore
from truckllm.observe.probes import run_probes
from truckllm.pipeline.dispatch import adopt
from truckllm.pipeline.health import Health
from truckllm.pipeline.router import Routing
from truckllm.pipeline.transport import Transport
from truckllm.runtime.reloader import ReloadResult
from truckllm.runtime.state import StateHolder
from truckllm.server import admin_console, admin_keys, responses_routes, routes
from truckllm.server.admin import admin_routes, metrics_routes
from truckllm.server.edge import add_routes, plain_routes
from truckllm.server.keys import (
    CONFIG_SYNC,
    INFLIGHT,
    LIMITER,
    OBSERVERS,
    OPS,
    RESPONSE_STORE,
    RESPONSES_ENDPOINT_MISSING,
    ROUTING,
    STATE,
    STATE_LINK,
    TRACING,
    TRANSPORT,
)
from truckllm.server.ops import InFlight, make_ops, run_reloader
from truckllm.server.state_file import save_state

# Body size is enforced per config snapshot in server.validation, so a reload can change
# it; aiohttp's own ceiling only has to stay out of the way.
_AIOHTTP_BODY_CEILING = 1 << 40


def create_app(holder: StateHolder, *, clock: Clock | None = None) -> web.Application:
    """The client-facing app; it also serves the admin API and /metrics unless
    `server.admin_listen` moves them to the app of `create_admin_app`.
    `clock` is for tests that move time (rate windows, budget periods) without sleeping."""
    app = web.Application(client_max_size=_AIOHTTP_BODY_CEILING)
    app[STATE] = holder
    app[TRANSPORT] = Transport()
    app[INFLIGHT] = InFlight()
    ops = make_ops(holder, app[INFLIGHT], app[TRANSPORT])
    app[OPS] = ops
    server = holder.current.config.server
    clients: ClientStore | None = None
    upstream: UpstreamStore
    if server.state_url is None:
        upstream = MemoryUpstreamStore(clock)   # one record per upstream key: health and limits
    else:
        # Imported only here: a process without state_url never loads the Redis client.
        from truckllm.limits.redis_clients import RedisClientStore
        from truckllm.limits.redis_link import StateLink
        from truckllm.limits.redis_upstream import RedisUpstreamStore
        from truckllm.runtime.config_sync import ConfigSync
        link = StateLink(server.state_url.get_secret_value(), server.state_failure)
        clients = RedisClientStore(link, clock or SystemClock())
        upstream = RedisUpstreamStore(link, clock)
        ops.state_backend = link.status
        ops.metrics.state_backend_up.set_function(lambda: 1 if link.up else 0)
        app[STATE_LINK] = link
        app[CONFIG_SYNC] = ConfigSync(link, ops.reloader)
        app.cleanup_ctx.append(_state_link)
    app[ROUTING] = Routing(Health(clock=clock, store=upstream))
    app[LIMITER] = Limiter(clock, clients=clients, upstream=upstream)
    app[LIMITER].adopt(holder.current.limits)
    app[TRACING] = ops.tracing
    ops.reloader.on_applied = (*ops.reloader.on_applied, _limiter_follows(app),
                               _routing_follows(app))
    if server.state_url is not None:
        ops.reloader.on_applied = (*ops.reloader.on_applied, app[CONFIG_SYNC].applied)
    app[OBSERVERS] = ops.observers
    app[RESPONSE_STORE] = []
    app[RESPONSES_ENDPOINT_MISSING] = set()
    app_routes = routes.routes(app) + responses_routes.routes(app)
    if holder.current.config.server.admin_listen is None:
        app_routes += plain_routes(_admin_routes())
    add_routes(app, app_routes)
    app.cleanup_ctx.append(_close_transport)
    app.cleanup_ctx.append(_health_checks)
    app.cleanup_ctx.append(save_state)
    app.cleanup_ctx.append(responses_routes.response_store)
    app.cleanup_ctx.append(_reloader)
    return app


def create_admin_app(main: web.Application) -> web.Application:
    """The admin API and /metrics on their own listener (`server.admin_listen`), with
    the same error envelope as the main app. Nothing it serves is recorded as traffic."""
    app = web.Application()
    app[OPS], app[STATE], app[LIMITER] = main[OPS], main[STATE], main[LIMITER]
    app[ROUTING], app[INFLIGHT], app[OBSERVERS] = main[ROUTING], main[INFLIGHT], main[OBSERVERS]
    app[TRACING] = main[TRACING]
    add_routes(app, plain_routes([*_admin_routes(), web.get("/health", routes.health)]))
    return app


def _admin_routes() -> list[web.RouteDef]:
    return [*admin_routes(), *admin_keys.routes(), *admin_console.routes(), *metrics_routes()]


def _limiter_follows(app: web.Application) -> Callable[[LoadedConfig, ReloadResult], None]:
    """After a reload the limiter drops state of ids that are gone at once, not lazily."""
    def adopt(loaded: LoadedConfig, result: ReloadResult) -> None:
        app[LIMITER].adopt(app[STATE].current.limits)
    return adopt


def _routing_follows(app: web.Application) -> Callable[[LoadedConfig, ReloadResult], None]:
    """After a reload, health forgets ids that are gone and re-enables rejected keys at
    once (requests would otherwise do it on their first pass)."""
    def adopt_routing(loaded: LoadedConfig, result: ReloadResult) -> None:
        adopt(app[ROUTING], app[STATE].current)
    return adopt_routing


async def _state_link(app: web.Application) -> AsyncIterator[None]:
    """The shared state server's probe, periodic pushes and config changes, for the app's
    lifetime; the usage not yet pushed goes once more before the connection closes."""
    link = app[STATE_LINK]
    tasks = [asyncio.create_task(link.run(), name="truckllm-state-link"),
             asyncio.create_task(app[CONFIG_SYNC].run(), name="truckllm-config-sync")]
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if link.up:
        from truckllm.limits.redis_link import FAILURES
        for push in link.every_second:
            with contextlib.suppress(*FAILURES):
                await push()
    await link.close()


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


async def _reloader(app: web.Application) -> AsyncIterator[None]:
    async for _ in run_reloader(app[OPS]):
        yield
