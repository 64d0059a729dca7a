"""The app's state file: where it is, loaded before serving and saved while serving
(truckllm.limits.persist does the reading and writing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from truckllm.limits import state_file_path
from truckllm.limits.persist import StateSaver
from truckllm.server.keys import LIMITER, STATE, STATE_LINK
from truckllm.server.workers import worker_identity


async def save_state(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: load the state file before serving, save it every few seconds while
    usage changes, and once more after the last request has finished."""
    loaded = app[STATE].current.loaded
    configured = loaded.config.server.state_file
    if configured is None and not _is_config_file(loaded.source):
        yield                       # a config that came from no file: nowhere to put state
        return
    if loaded.config.server.state_url is not None:
        # The shared state server keeps usage and spend; a state file is imported once.
        from truckllm.limits.redis_import import import_state_file
        await import_state_file(app[LIMITER], app[STATE_LINK],
                                state_file_path(loaded.source, configured))
        yield
        return
    path = state_file_path(loaded.source, configured)
    worker = worker_identity()
    if worker is not None:
        # --workers without state_url: a file per worker, so that none overwrites another's
        path = path.with_name(f"{path.stem}.worker-{worker[1]}{path.suffix}")
    async with StateSaver(app[LIMITER], path):
        yield


def _is_config_file(source: str) -> bool:
    return not source.startswith("<") and Path(source).is_file()
