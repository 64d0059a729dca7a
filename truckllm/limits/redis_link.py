"""The connection to the shared state server (Redis or Valkey, `server.state_url`) and
whether it is reachable.

Every call has a timeout, so a hung server is an outage, not a hang. The first failing
call marks the link down (logged once); the stores then serve from their in-memory
fallback and keep what they counted meanwhile. `run()` (a task for the app's lifetime)
probes a down link every second and, once it answers again, lets the stores push what
they kept (`on_up`), then marks it up; while up it runs the stores' periodic work
(`every_second`): lease renewal, batched usage. Must not import the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

log = structlog.get_logger("truckllm.state")

CALL_TIMEOUT_S = 0.5        # a call slower than this counts as an outage
PROBE_INTERVAL_S = 1.0
PREFIX = "truckllm:"

# What a failed call can raise: the server's errors, the socket's, and a timeout.
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

Periodic = Callable[[], Awaitable[None]]
# What to do with a call's answer: (result, None) or (None, what it raised).
Done = Callable[[Any, BaseException | None], None]
_Call = tuple[AsyncScript, list[str], list[Any], Done]


class StateLink:
    """One client of the state server for the process, and its up/down state."""

    def __init__(self, url: str, failure: Literal["open", "closed"] = "open") -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=CALL_TIMEOUT_S, socket_connect_timeout=CALL_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.fail_closed = failure == "closed"
        self.instance = uuid.uuid4().hex[:12]       # names this process's grants
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.on_up: list[Periodic] = []
        self.every_second: list[Periodic] = []
        self.config_sync: Callable[[], dict[str, Any]] | None = None    # its status
        self._batch: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._loaded: set[str] = set()      # the scripts the server is known to hold

    def script(self, source: str) -> AsyncScript:
        return self.client.register_script(source)

    def failed(self, exc: BaseException) -> None:
        """A call failed: the link is down until a probe gets an answer."""
        self.last_error = _describe(exc)
        if self.up:
            self.up = False
            self.down_since = time.time()
            log.warning("state_backend_down", error=self.last_error,
                        fallback="in-memory limits per instance until it is back")

    async def call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run a script and wait for its answer; raises one of FAILURES (after marking
        the link down)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self.post(script, keys, args, done)
        return await future

    def post(self, script: AsyncScript, keys: list[str], args: list[Any], done: Done) -> None:
        """Queue a script without waiting for it: `done` gets its answer or failure.

        Calls go to Redis in one pipeline per turn of the event loop (one write and one
        read for all of them, each script still atomic on its own), with one pipeline in
        flight at a time: what is queued meanwhile goes in the next. So Redis runs this
        process's calls in the order they were made: work posted at the end of a request
        (not waited for) is done before any admission made after it."""
        self._batch.append((script, keys, args, done))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def flushed(self) -> None:
        """Wait until every call queued so far has its answer (reads of what this
        process counted, and shutdown, wait for it)."""
        while self._sender is not None:
            await asyncio.shield(self._sender)

    async def _send_all(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, _ = batch[0]
                results: list[Any] = [await script(keys=keys, args=args)]
                self._loaded.add(script.sha)
            else:
                # A script the server may not hold yet goes with its source (EVAL loads
                # it): retrying one later would run it after the calls queued behind it.
                pipe = self.client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    if script.sha in self._loaded:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    else:
                        pipe.eval(str(script.script), len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
                for index, result in enumerate(results):
                    script, keys, args, _ = batch[index]
                    if isinstance(result, NoScriptError):     # Redis restarted: load it
                        self._loaded.clear()
                        results[index] = await script(keys=keys, args=args)
                    self._loaded.add(script.sha)
        except FAILURES as exc:
            self.failed(exc)
            # What was queued behind it would wait for the same server: it fails with it,
            # so a hung server costs a request one timeout, not two.
            batch, self._batch = batch + self._batch, []
            for *_, done in batch:
                _report(done, None, exc)
            return
        for (*_, done), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                _report(done, None, result)
            else:
                _report(done, result, None)

    def status(self) -> dict[str, Any]:
        return {"backend": "redis", "up": self.up, "down_since": self.down_since,
                "last_error": self.last_error,
                "on_failure": "closed" if self.fail_closed else "open",
                "config_sync": None if self.config_sync is None else self.config_sync()}

    async def run(self) -> None:
        """For the app's lifetime: probe while down, periodic work while up."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if not self.up:
                await self._probe()
                continue
            for work in self.every_second:
                try:
                    await work()
                except FAILURES as exc:
                    self.failed(exc)
                    break

    async def _probe(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), CALL_TIMEOUT_S * 2)
            for push in self.on_up:
                await push()
        except FAILURES as exc:
            self.last_error = _describe(exc)
            return
        downtime = time.time() - (self.down_since or time.time())
        self.up, self.down_since = True, None
        log.warning("state_backend_up", down_s=round(downtime, 1))

    async def close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self.flushed()        # the ends of the last requests reach Redis
        await self.client.aclose()


def _report(done: Done, result: Any, exc: BaseException | None) -> None:
    """Hand a call its answer; a bug in one caller's handling must not lose the others'."""
    try:
        done(result, exc)
    except Exception:
        log.exception("state_call_handler_failed")


def _describe(exc: BaseException) -> str:
    """What went wrong, without the URL (it may carry a password)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]


def text(value: Any) -> str:
    """A reply field as text (replies come as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
