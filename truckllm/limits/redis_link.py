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
_Call = tuple[AsyncScript, list[str], list[Any], "asyncio.Future[Any]"]


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
        self._sending: set[asyncio.Task[None]] = set()

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
        """Run a script; raises one of FAILURES (after marking the link down).

        Calls made in the same turn of the event loop (concurrent requests) go to Redis
        together, in one pipeline: one write and one read for all of them, each script
        still atomic on its own."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((script, keys, args, future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._send_batch)
        return await future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, future = batch[0]
                results: list[Any] = [await script(keys=keys, args=args)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
                for index, result in enumerate(results):
                    if isinstance(result, NoScriptError):     # Redis restarted: load it
                        script, keys, args, _ = batch[index]
                        results[index] = await script(keys=keys, args=args)
        except FAILURES as exc:
            self.failed(exc)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

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
        await self.client.aclose()


def _describe(exc: BaseException) -> str:
    """What went wrong, without the URL (it may carry a password)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]
