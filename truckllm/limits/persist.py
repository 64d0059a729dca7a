"""The state file: usage and spend written atomically every few seconds and on shutdown,
read at start. A missing or corrupt file means a warning and a fresh start.

File I/O runs in a worker thread (asyncio.to_thread) so the event loop never blocks on
the disk. Owns its one background task. Must not import the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import structlog

from truckllm.config.files import write_atomic
from truckllm.limits.limiter import Limiter

STATE_VERSION = 1
SAVE_INTERVAL_S = 5.0
log = structlog.get_logger("truckllm.limits")


def state_file_path(config_file: str | Path, state_file: str | None,
                    env: Mapping[str, str] | None = None) -> Path:
    """`server.state_file` resolved; default `<config stem>.state.json`. A relative path
    is taken in `$STATE_DIRECTORY` when systemd sets it (the service's one writable
    directory, the first when it lists several), else beside the config file."""
    env = os.environ if env is None else env
    config_path = Path(config_file)
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state_directory) if state_directory else config_path.parent
    if state_file is None:
        return base / f"{config_path.stem}.state.json"
    path = Path(state_file).expanduser()
    return path if path.is_absolute() else base / path


def encode_state(limiter: Limiter) -> bytes:
    body: dict[str, Any] = {"version": STATE_VERSION,
                            "saved_at": limiter.clock.now().isoformat(), **limiter.snapshot()}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)




def decode_state(raw: bytes) -> Any:
    """The saved snapshot; ValueError when the file is not one this version wrote."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} state file")
    return data


async def load_state(limiter: Limiter, path: Path) -> bool:
    """Restore the limiter from `path`; False (after a warning) on a fresh start.

    A corrupt file is renamed to `<file>.corrupt` so the next save does not destroy it.
    """
    try:
        raw = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        log.warning("state_file_missing", path=str(path), action="starting with zero usage")
        return False
    except OSError as exc:
        log.warning("state_file_unreadable", path=str(path), error=exc.strerror,
                    action="starting with zero usage")
        return False
    try:
        limiter.restore(decode_state(raw))
    except ValueError as exc:
        aside = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.replace, path, aside)
        log.warning("state_file_corrupt", path=str(path), error=str(exc), moved_to=str(aside),
                    action="starting with zero usage")
        return False
    return True


class StateSaver:
    """Async context manager: loads the state file on entry, saves it every `interval_s`
    while anything changed, and once more on exit (shutdown)."""

    def __init__(self, limiter: Limiter, path: Path, interval_s: float = SAVE_INTERVAL_S) -> None:
        self.limiter = limiter
        self.path = path
        self.interval_s = interval_s
        self._saved_changes: int | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StateSaver:
        await load_state(self.limiter, self.path)
        self._saved_changes = self.limiter.changes
        self._task = asyncio.create_task(self._save_periodically(), name="truckllm-state-saver")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
        await self.save()

    async def save(self) -> bool:
        """Write the file if anything changed since the last write; never raises OSError."""
        async with self._lock:
            changes = self.limiter.changes
            if changes == self._saved_changes:
                return False
            data = encode_state(self.limiter)     # on the loop: a consistent snapshot
            try:
                await asyncio.to_thread(write_atomic, self.path, data)
            except OSError as exc:
                log.warning("state_file_write_failed", path=str(self.path), error=exc.strerror)
                return False
            self._saved_changes = changes
            return True

    async def _save_periodically(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            await self.save()
