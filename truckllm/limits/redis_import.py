"""Moving from the state file to a shared state server without losing spend: on a start
with `server.state_url`, the usage and spend in the state file are added to Redis once.

Once per file content: a marker named by the file's sha256 is set in Redis with the
import, so an instance restarting with the same file, or a second instance started from a
copy of it, adds nothing again. Must not import the server.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import structlog

from truckllm.limits.limiter import Limiter
from truckllm.limits.persist import decode_state
from truckllm.limits.redis_link import FAILURES, PREFIX, StateLink

log = structlog.get_logger("truckllm.state")


async def import_state_file(limiter: Limiter, link: StateLink, path: Path) -> bool:
    """Add the state file's usage to Redis if this content was never imported; True if it
    was now. A missing file is nothing to import; Redis unreachable: tried next start."""
    try:
        raw = await asyncio.to_thread(path.read_bytes)
    except OSError:
        return False
    marker = f"{PREFIX}imported:{hashlib.sha256(raw).hexdigest()}"
    try:
        data = decode_state(raw)
        limiter.restore(data)           # queued in the stores; pushed below
    except ValueError as exc:
        log.warning("state_file_not_imported", path=str(path), error=str(exc))
        return False
    try:
        first = await link.client.set(marker, link.instance, nx=True)
    except FAILURES as exc:
        link.failed(exc)
        _forget_queued(limiter)
        log.warning("state_file_not_imported", path=str(path),
                    error="the state server is unreachable; imported at the next start")
        return False
    if not first:
        _forget_queued(limiter)
        return False
    try:
        for push in link.every_second:
            await push()
    except FAILURES as exc:
        link.failed(exc)            # what is still queued is pushed when it is back
    log.info("state_file_imported", path=str(path), keys=len(data.get("client_keys", {})))
    return True


def _forget_queued(limiter: Limiter) -> None:
    """Drop what `restore` queued: it is in Redis already (or will be imported later)."""
    limiter.clients.retain(())
    limiter.upstream.retain(())
