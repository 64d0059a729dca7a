"""Running the gateway process: uvloop, listen, wait for a signal, drain, exit.

SIGTERM/SIGINT stop accepting new connections at once, give in-flight requests and
streams `server.shutdown_grace_s` to finish, then end.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from pathlib import Path

import structlog
from aiohttp import web

from truckllm.config.loader import LoadedConfig
from truckllm.config.schema import ServerConfig, split_host_port
from truckllm.limits import state_file_path
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server import admin, admin_console, admin_keys
from truckllm.server.app import create_admin_app, create_app
from truckllm.server.connections import GatewaySite, handler_settings
from truckllm.server.keys import INFLIGHT, LIMITER, OPS, ROUTING, STATE
from truckllm.server.peers import Peers, token_guard
from truckllm.server.workers import announce, peer_ports, worker_identity, worker_token

log = structlog.get_logger("truckllm")

# Every in-flight request holds a few hundred young GC-tracked objects (coroutines,
# futures, dicts), so under load CPython's default gen0 threshold (700) starts a
# collection every few dozen requests, each scanning all live young objects: measured at
# tens of microseconds per request (gc.callbacks under `make bench` load). A larger
# threshold makes collections rare. Requests leave almost no cyclic garbage (checked with gc.DEBUG_SAVEALL), so
# memory hardly changes; a collection of 5000 young objects pauses well under 1 ms.
GC_GEN0_THRESHOLD = 5_000


class ListenError(Exception):
    """The address could not be bound (in use, not permitted, not local)."""


def run(loaded: LoadedConfig, host: str, port: int) -> None:
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:                      # pragma: no cover - uvloop is a dependency
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(loaded, host, port))


async def serve(loaded: LoadedConfig, host: str, port: int) -> None:
    state = build_state(loaded, version=1)
    if state.client_keys is None:
        log.warning("open_api", detail="the config has no `keys:` section: anyone who can reach "
                    "this port can use every model")
    app = create_app(StateHolder(state))
    ops = app[OPS]
    ops.configure_logging()                 # now with the config's secrets to redact
    loop = asyncio.get_running_loop()
    # At once: SIGHUP's default action would end the process. An early one waits in the
    # reloader until its worker starts.
    loop.add_signal_handler(signal.SIGHUP, ops.reloader.request_reload, "sighup")
    grace = state.config.server.shutdown_grace_s
    server = state.config.server
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=grace,
                           **handler_settings(server))
    runners = [runner]
    await runner.setup()
    worker = worker_identity()
    try:
        await _listen(runner, host, port, server, shared=worker is not None)
        admin_listen = state.config.server.admin_listen
        if admin_listen is not None:
            admin_runner = web.AppRunner(create_admin_app(app), **handler_settings(server))
            runners.append(admin_runner)
            await admin_runner.setup()
            await _listen(admin_runner, *split_host_port(admin_listen), server,
                          shared=worker is not None)
            log.info("admin_listening", url=f"http://{admin_listen}")
        if worker is not None:
            runners.append(await _join_workers(app, *worker))
        tune_gc()                           # once serving for sure: it is process-wide
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        watchdog = (None if worker is None else
                    asyncio.create_task(_stop_when_orphaned(stop), name="truckllm-orphan"))
        log.info("listening", url=f"http://{host}:{port}", config=loaded.source,
                 sha256=loaded.sha256, state_file=_state_file(loaded),
                 providers=len(state.providers), aliases=len(state.all_routes))
        await stop.wait()
        if watchdog is not None:
            watchdog.cancel()
        log.info("shutting_down", in_flight=app[INFLIGHT].count, grace_s=grace)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for each in reversed(runners):
            await each.cleanup()
    log.info("stopped")


def _state_file(loaded: LoadedConfig) -> str | None:
    configured = loaded.config.server.state_file
    if configured is None and not Path(loaded.source).is_file():
        return None                 # a config from no file keeps no state
    return str(state_file_path(loaded.source, configured))


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (killed, so it could not pass SIGTERM on) drains
    and exits rather than serve on unsupervised."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("supervisor_gone", action="draining and exiting")
    stop.set()


async def _join_workers(app: web.Application, directory: Path, index: int) -> web.AppRunner:
    """A worker of `--workers`: serve this worker's own metrics and its part of every
    admin answer on a private port and tell the others where; /metrics and the admin
    API then answer for every worker (truckllm.server.peers)."""
    ops = app[OPS]
    token = worker_token()
    peer_app = web.Application(middlewares=[token_guard(token)])
    peer_app.router.add_routes([
        web.get(admin.SELF_METRICS_PATH, admin.own_metrics),
        web.get(admin.SELF_STATUS_PATH, admin.own_status),
        web.get(admin.SELF_PROVIDERS_PATH, admin.own_providers),
        web.get(admin.SELF_LOGS_PATH, admin.own_logs),
        web.post(admin.SELF_RELOAD_PATH, admin.own_reload),
        web.get(admin_keys.SELF_KEYS_PATH, admin_keys.own_keys),
        web.post(admin_keys.SELF_RESET_PATH, admin_keys.own_reset),
        web.get(admin_console.SELF_HISTORY_PATH, admin_console.own_history),
    ])
    peer_app[OPS], peer_app[STATE], peer_app[ROUTING] = ops, app[STATE], app[ROUTING]
    peer_app[LIMITER] = app[LIMITER]
    peer_runner = web.AppRunner(peer_app)
    await peer_runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(peer_runner, sock).start()
    announce(directory, index, sock.getsockname()[1])
    ops.worker_peers = Peers(lambda: peer_ports(directory, index), token)
    ops.worker_index = index
    return peer_runner


async def _listen(runner: web.AppRunner, host: str, port: int, server: ServerConfig,
                  *, shared: bool = False) -> None:
    site = GatewaySite(runner, host, port, server, reuse_port=shared)
    try:
        await site.start()
    except OSError as exc:
        reason = "the port is already in use" if exc.errno == 98 else exc.strerror
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None


def tune_gc() -> None:
    """After start-up: freeze what exists (imports, config, app) out of every future
    collection, collect young objects less often (see GC_GEN0_THRESHOLD), and turn the
    collector on (`truckllm serve` starts with it off).

    No collection comes first: it would walk everything start-up built (tens of
    milliseconds of CPU on every start) to free the little cyclic garbage start-up left
    behind, a few hundred KB once, which the freeze keeps instead."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    gc.enable()
