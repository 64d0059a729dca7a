"""The one reload path: file change, SIGHUP, POST /admin/v1/reload, POST /admin/v1/config.

Every trigger ends in `_apply`: parse -> validate -> compile a new state -> swap one
reference in the holder -> run the on-applied hooks. An invalid config changes nothing:
its errors are returned, logged and counted. Unchanged bytes do nothing. Listener
settings are reported as needing a restart. Reloads run one at a time.
Owns its background tasks (file watcher, signal-triggered reloads); `stop()` cancels them.
Must not import the server; it is handed `compile` and the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog
from watchfiles import Change, awatch

from truckllm.config.changes import ConfigChanges, diff_configs
from truckllm.config.edits import locate
from truckllm.config.files import write_atomically
from truckllm.config.loader import ConfigError, ConfigIssue, LoadedConfig, load_bytes
from truckllm.config.redaction import merge_posted, parse_posted, to_yaml
from truckllm.observe.metrics import Metrics

S = TypeVar("S")
S_contra = TypeVar("S_contra", contravariant=True)
# Editors save in bursts (truncate, write, write, chmod; or temp file and rename): the
# watcher waits until the file has been quiet for WATCH_QUIET_MS, so a burst is one reload
# of the finished file, but gives up waiting after WATCH_DEBOUNCE_MS of constant writing.
WATCH_QUIET_MS = 100
WATCH_DEBOUNCE_MS = 1000


class Holder(Protocol[S_contra]):
    def swap(self, state: S_contra) -> object: ...


@dataclass(frozen=True, slots=True)
class ReloadResult:
    trigger: str                        # file | sighup | admin | admin_config
    ok: bool
    changed: bool                       # False: same bytes, or invalid
    version: int                        # the config version in use after this attempt
    sha256: str                         # of the config in use after this attempt
    at: float
    errors: tuple[ConfigIssue, ...] = ()
    changes: ConfigChanges | None = None
    write_failed: bool = False          # a valid POSTed config could not be saved

    @property
    def needs_restart(self) -> tuple[str, ...]:
        return self.changes.needs_restart if self.changes else ()

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"reloaded": self.changed, "version": self.version,
                                "sha256": self.sha256, "trigger": self.trigger}
        if not self.ok:
            body["errors"] = [issue.as_dict() for issue in self.errors]
        elif not self.changed:
            body["unchanged"] = True
        if self.changes is not None:
            body["changes"] = self.changes.as_dict()
            body["needs_restart"] = list(self.needs_restart)
        return body


AppliedHook = Callable[[LoadedConfig, ReloadResult], None]


@dataclass
class Reloader(Generic[S]):
    """Holds the config in use and turns every trigger into one serialized apply."""

    path: Path
    loaded: LoadedConfig
    holder: Holder[S]
    compile: Callable[[LoadedConfig, int], S]     # (config, its version) -> new state
    metrics: Metrics | None = None
    on_applied: Sequence[AppliedHook] = ()
    env: Mapping[str, str] | None = None     # None: os.environ at each reload
    version: int = 1
    started_at: float = field(default_factory=time.time)
    last_result: ReloadResult | None = None
    # The config the process started with: its listeners run with these settings until a
    # restart, so what "needs restart" is judged against it. None: `loaded` at creation.
    started_with: LoadedConfig | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _requested: asyncio.Event = field(default_factory=asyncio.Event)
    _pending_trigger: str = "sighup"
    _worker: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None
    _retired: list[asyncio.Task[None]] = field(default_factory=list)   # cancelled watchers
    _log: Any = field(default_factory=lambda: structlog.get_logger("truckllm.reload"))

    def __post_init__(self) -> None:
        if self.started_with is None:
            self.started_with = self.loaded

    # -- triggers ------------------------------------------------------------------

    async def reload(self, trigger: str = "admin") -> ReloadResult:
        """Re-read the file and apply it when its bytes changed."""
        async with self._lock:
            try:
                raw = await asyncio.to_thread(self.path.read_bytes)
            except OSError as exc:
                issue = ConfigIssue("", f"cannot read {self.path}: {exc.strerror}")
                return self._failed(trigger, [issue])
            return await self._apply_raw(raw, trigger)

    async def apply_posted(self, body: bytes) -> ReloadResult:
        """POST /admin/v1/config: validate, persist atomically (FILE.bak kept), then apply."""
        async with self._lock:
            try:
                raw, loaded, state = await asyncio.to_thread(self._build_posted, body)
            except ConfigError as exc:
                issues = await asyncio.to_thread(_posted_locations, body, exc.issues)
                return self._failed("admin_config", issues)
            if loaded.sha256 != self.loaded.sha256:
                try:
                    await asyncio.to_thread(write_atomically, self.path, raw)
                except OSError as exc:
                    issue = ConfigIssue("", f"cannot write {self.path}: {exc.strerror}")
                    return replace(self._failed("admin_config", [issue]), write_failed=True)
            return self._swap(loaded, state, "admin_config")

    async def apply_edit(self, edit: Callable[[bytes], bytes], trigger: str) -> ReloadResult:
        """An edit of the file's text (a client key created, changed or revoked): read the
        file, edit, validate, write atomically (FILE.bak kept), apply. Under the reload
        lock, so concurrent edits each see the one before and none is lost. `edit` may
        raise (e.g. an unknown id); then nothing is written."""
        async with self._lock:
            try:
                current = await asyncio.to_thread(self.path.read_bytes)
            except OSError as exc:
                issue = ConfigIssue("", f"cannot read {self.path}: {exc.strerror}")
                return self._failed(trigger, [issue])
            raw = await asyncio.to_thread(edit, current)
            try:
                loaded, state = await asyncio.to_thread(self._build, raw)
            except ConfigError as exc:
                return self._failed(trigger, exc.issues)
            if raw != current:          # (a change to what is already there writes nothing)
                try:
                    await asyncio.to_thread(write_atomically, self.path, raw)
                except OSError as exc:
                    issue = ConfigIssue("", f"cannot write {self.path}: {exc.strerror}")
                    return replace(self._failed(trigger, [issue]), write_failed=True)
            return self._swap(loaded, state, trigger)

    async def validate_posted(self, body: bytes) -> list[ConfigIssue]:
        """POST /admin/v1/config/validate: the problems of a posted config; changes nothing.
        Locations are the line and column in the posted text (`<posted>:14:7`)."""
        try:
            await asyncio.to_thread(self._build_posted, body)
        except ConfigError as exc:
            return await asyncio.to_thread(_posted_locations, body, exc.issues)
        return []

    def request_reload(self, trigger: str = "sighup") -> None:
        """Signal-handler safe: ask the worker task to reload soon."""
        self._pending_trigger = trigger
        self._requested.set()

    @property
    def watching(self) -> bool:
        """Whether the file watcher runs (it follows `server.watch` on every reload)."""
        return self._watcher is not None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.metrics is not None:
            aliases = [model.alias for model in self.loaded.config.models]
            self.metrics.set_config(aliases, self.loaded.sha256, self.version)
        self._worker = asyncio.create_task(self._serve_requests(), name="truckllm-reload")
        self._sync_watcher()

    async def stop(self) -> None:
        tasks = [t for t in (self._worker, self._watcher, *self._retired) if t is not None]
        self._worker = self._watcher = None
        self._retired.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve_requests(self) -> None:
        while True:
            await self._requested.wait()
            self._requested.clear()
            await self.reload(self._pending_trigger)

    def _sync_watcher(self) -> None:
        """Run the file watcher exactly when `server.watch` is on."""
        wanted = self.loaded.config.server.watch and self.path.is_file()
        if wanted and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="truckllm-watch")
        elif not wanted and self._watcher is not None:
            self._watcher.cancel()
            self._retired.append(self._watcher)     # awaited in stop()
            self._watcher = None

    async def _watch(self) -> None:
        """Watch the directory, not the file: rename-replace writes swap the inode."""
        target = self.path.resolve()
        directories = {self.path.parent.resolve(), target.parent}
        names = {self.path.name, target.name}

        def is_config(change: Change, changed_path: str) -> bool:
            name = os.path.basename(changed_path)
            return name in names or name.startswith("..")    # Kubernetes' ..data swap

        async for _ in awatch(*directories, watch_filter=is_config, step=WATCH_QUIET_MS,
                              debounce=WATCH_DEBOUNCE_MS, recursive=False):
            await self.reload("file")

    # -- the one apply path ------------------------------------------------------------

    def _posted_file_bytes(self, body: bytes) -> bytes:
        return to_yaml(merge_posted(parse_posted(body), self.loaded))

    def _build(self, raw: bytes) -> tuple[LoadedConfig, S]:
        """Parse, validate, compile: CPU work that runs in a worker thread (a big or
        hostile file must not stall the requests in flight). It reads `self.loaded` and
        `self.version`, which change only under the lock that apply callers hold."""
        try:
            loaded = load_bytes(raw, str(self.path), self.env)
            return loaded, self.compile(loaded, self.version + 1)
        except ConfigError:
            raise
        except Exception as exc:
            # A bug must not take the reload worker or the watcher down with it. The
            # exception's text may hold values of the new config: log only where it was.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._log.error("config could not be compiled", error=type(exc).__name__,
                            at=f"{where.filename}:{where.lineno}")
            raise ConfigError([ConfigIssue(
                "", f"the config could not be compiled ({type(exc).__name__}); see the log")]) from None

    def _build_posted(self, body: bytes) -> tuple[bytes, LoadedConfig, S]:
        raw = self._posted_file_bytes(body)
        return (raw, *self._build(raw))

    async def _apply_raw(self, raw: bytes, trigger: str) -> ReloadResult:
        if raw == self.loaded.raw:
            return self._unchanged(trigger)
        try:
            loaded, state = await asyncio.to_thread(self._build, raw)
        except ConfigError as exc:
            return self._failed(trigger, exc.issues)
        return self._swap(loaded, state, trigger)

    def _unchanged(self, trigger: str) -> ReloadResult:
        """The file holds the running config. After a failed reload that is news: the
        file was put back, so the failure is over (status, metric and alert clear)."""
        result = ReloadResult(trigger, True, False, self.version, self.loaded.sha256, time.time())
        if self.last_result is not None and not self.last_result.ok:
            self._record(result)
            self._log.info("config file matches the running config again", trigger=trigger,
                           version=self.version)
        else:
            self._log.info("config unchanged; nothing to do", trigger=trigger,
                           version=self.version, sha256=self.loaded.sha256)
        return result

    def _swap(self, loaded: LoadedConfig, state: S, trigger: str) -> ReloadResult:
        if loaded.raw == self.loaded.raw:
            return self._unchanged(trigger)
        started = self.started_with.config if self.started_with is not None else None
        changes = diff_configs(self.loaded.config, loaded.config, started)
        self.holder.swap(state)
        self.loaded = loaded
        self.version += 1
        result = ReloadResult(trigger, True, True, self.version, loaded.sha256, time.time(),
                              changes=changes)
        self._record(result)
        self._log.info("config reloaded", trigger=trigger, version=self.version,
                       sha256=loaded.sha256, **changes.as_dict())
        if changes.needs_restart:
            self._log.warning("config settings need a restart to apply", trigger=trigger,
                              settings=list(changes.needs_restart))
        for hook in self.on_applied:
            hook(loaded, result)
        self._sync_watcher()
        return result

    def _failed(self, trigger: str, issues: Sequence[ConfigIssue]) -> ReloadResult:
        result = ReloadResult(trigger, False, False, self.version, self.loaded.sha256,
                              time.time(), errors=tuple(issues))
        self._record(result)
        self._log.error("config reload failed; the running config stays", trigger=trigger,
                        version=self.version, errors=[str(issue) for issue in issues])
        return result

    def _record(self, result: ReloadResult) -> None:
        self.last_result = result
        if self.metrics is not None:
            self.metrics.count_reload(result.ok, result.at)
            if result.ok:
                aliases = [model.alias for model in self.loaded.config.models]
                self.metrics.set_config(aliases, self.loaded.sha256, self.version)


def _posted_locations(body: bytes, issues: Sequence[ConfigIssue]) -> list[ConfigIssue]:
    """A posted config's issues located by their path in the text as posted (it is
    re-written before loading, so the loader's own line numbers would mislead)."""
    spots = locate(body, [issue.path for issue in issues])
    return [replace(issue, location=None if spot is None else f"<posted>:{spot[0]}:{spot[1]}")
            for issue, spot in zip(issues, spots, strict=True)]
