"""The connection to the shared state server (Redis or Valkey, `server.state_url`) and
whether it is reachable.

Every call has a timeout, so a hung server is an outage, not a hang. The first failing
call marks the link down (logged once); the stores then serve from their in-memory
fallback and keep what they counted meanwhile. `run()` (a task for the app's lifetime)
probes a down link every second and, once it answers again, lets the stores push what
they kept (`on_up`), then marks it up; while up it runs the stores' periodic work
(`every_second`): lease renewal, batched usage. Must not import the server.

Why the scripts' commands are put in Redis's wire format here rather than by redis-py's
pipeline: every limited request runs two scripts, and the pipeline encodes and checks each
argument in Python and builds a pipeline object per batch. Measured under callgrind
(docs/dev/state.md), the Redis-backed limiter added 64% to a request's instructions that
way and 15% this way. What is written is plain RESP (arrays of bulk strings, which every
Redis and Valkey reads) through the connection's public `send_packed_command`; answers are
still read and parsed by redis-py (hiredis when installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

log = structlog.get_logger("truckllm.state")

CALL_TIMEOUT_S = 0.5        # no answer for this long (twice, for a script) is an outage
PROBE_INTERVAL_S = 1.0
PREFIX = "truckllm:"

# What a failed call can raise: the server's errors, the socket's, and a timeout.
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

Periodic = Callable[[], Awaitable[None]]
# What to do with a call's answer: (result, None) or (None, what it raised).
Done = Callable[[Any, BaseException | None], None]
# A script's keys and arguments: text, or numbers (sent as their decimal text).
Field = str | int | float


class Script:
    """A Lua script and the start of the two commands that run it: by its SHA1 once the
    server holds it, with its source (which loads it) before."""

    __slots__ = ("by_sha", "sha", "source", "with_source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.by_sha = _bulk(b"EVALSHA") + _bulk(self.sha.encode())
        self.with_source = _bulk(b"EVAL") + _bulk(source.encode())


class Keys:
    """A script's keys in the wire format, encoded once: a client key's are the same for
    every request of it."""

    __slots__ = ("encoded", "fields")

    def __init__(self, names: Sequence[str]) -> None:
        self.fields = len(names) + 1
        self.encoded = b"".join([_bulk(b"%d" % len(names)), *[_bulk(n.encode()) for n in names]])


class _Call:
    """A command queued or sent: a script's (its keys and arguments already in the wire
    format, after the script's name), or a whole command of its own."""

    __slots__ = ("done", "fields", "script", "tail")

    def __init__(self, script: Script | None, tail: bytes, fields: int, done: Done) -> None:
        self.script = script
        self.tail = tail
        self.fields = fields
        self.done = done

    def command(self, loaded: set[str]) -> bytes:
        if self.script is None:
            return self.tail
        head = self.script.by_sha if self.script.sha in loaded else self.script.with_source
        return b"*%d\r\n%b%b" % (self.fields + 2, head, self.tail)


_PING = b"*1\r\n$4\r\nPING\r\n"


class StateLink:
    """One client of the state server for the process, and its up/down state."""

    def __init__(self, url: str, failure: Literal["open", "closed"] = "open") -> None:
        options: dict[str, Any] = {
            "socket_connect_timeout": CALL_TIMEOUT_S, "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0}
        # Commands of their own (reads, the probe, imports): each waits for its answer.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=CALL_TIMEOUT_S, **options)
        # The scripts' connection: one, so Redis runs them in the order they were made;
        # its calls are timed here, by one timer for all (see _check).
        self._scripts: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=None, single_connection_client=True, **options)
        self.fail_closed = failure == "closed"
        self.instance = uuid.uuid4().hex[:12]       # names this process's grants
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.on_up: list[Periodic] = []
        self.every_second: list[Periodic] = []
        self.config_sync: Callable[[], dict[str, Any]] | None = None    # its status
        self._batch: list[_Call] = []               # made this turn, not written yet
        self._sent: deque[_Call] = deque()          # written, in order, not answered yet
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._answers = 0                           # answers read, ever
        self._closing: set[asyncio.Task[None]] = set()
        self._loaded: set[str] = set()      # the scripts the server is known to hold

    def script(self, source: str) -> Script:
        return Script(source)

    def failed(self, exc: BaseException) -> None:
        """A call failed: the link is down until a probe gets an answer."""
        self.last_error = _describe(exc)
        if self.up:
            self.up = False
            self.down_since = time.time()
            log.warning("state_backend_down", error=self.last_error,
                        fallback="in-memory limits per instance until it is back")

    async def call(self, script: Script, keys: Keys | Sequence[str],
                   args: Sequence[Field]) -> Any:
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

    def post(self, script: Script, keys: Keys | Sequence[str], args: Sequence[Field],
             done: Done) -> None:
        """Queue a script without waiting for it: `done` gets its answer or failure.

        The calls made in one turn of the event loop are written together, on the one
        connection of the scripts, without waiting for the answers to earlier ones. Redis
        runs a connection's commands in the order it reads them, so it runs this
        process's calls in the order they were made: work posted at the end of a request
        (not waited for) is done before any admission made after it."""
        if not isinstance(keys, Keys):
            keys = Keys(keys)
        tail = b"".join([keys.encoded, *[_bulk(_encoded(arg)) for arg in args]])
        self._queue(_Call(script, tail, keys.fields + len(args), done))

    def _queue(self, call: _Call) -> None:
        self._batch.append(call)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def written(self) -> None:
        """Wait until every call queued so far is written to the server, not answered:
        a request's end written before its response goes out reaches Redis before any
        admission the client's next request makes, on whichever instance. A write that
        cannot finish (a hung server) is waited for no longer than a call."""
        if self._writer is not None:
            await asyncio.wait({self._writer}, timeout=CALL_TIMEOUT_S)

    async def flushed(self) -> None:
        """Wait until every call queued so far has its answer or has failed (reads of
        what this process counted, and shutdown, wait for it)."""
        if not self._batch and not self._sent:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if not future.done():
                future.set_result(None)

        self._queue(_Call(None, _PING, 1, done))        # answered after all before it
        await future

    async def _write(self) -> None:
        """Write what was queued (in the turn this task was created in, and meanwhile)."""
        try:
            while self._batch:
                if self._closing:       # the failed connection closed before a new one
                    await asyncio.wait(self._closing)
                conn = self._scripts.connection or (await self._scripts.initialize()).connection
                assert conn is not None
                batch, self._batch = self._batch, []
                data = b"".join([call.command(self._loaded) for call in batch])
                self._sent.extend(batch)
                await conn.send_packed_command(data, check_health=False)    # connects
                loop = asyncio.get_running_loop()
                if self._reader is None:
                    self._reader = loop.create_task(self._read(conn))
                if self._watchdog is None:
                    self._watchdog = loop.call_later(CALL_TIMEOUT_S, self._check, self._answers)
        except FAILURES as exc:
            self._fail(exc)
        finally:
            self._writer = None

    async def _read(self, conn: AbstractConnection) -> None:
        """Hand the answers, in order, to the calls written on `conn`, for as long as it
        is open."""
        try:
            while True:
                try:
                    answer: Any = await conn.read_response()
                except ResponseError as exc:        # an answer: this call's error
                    answer = exc
                self._answers += 1
                if not self._sent:
                    raise ConnectionError("an answer to no call")
                call = self._sent.popleft()
                if isinstance(answer, NoScriptError) and call.script is not None:
                    # Redis lost its scripts (SCRIPT FLUSH): this one goes again, with
                    # its source, after the calls already written.
                    self._loaded.clear()
                    self._queue(call)
                    continue
                if isinstance(answer, BaseException):
                    _report(call.done, None, answer)
                    continue
                if call.script is not None:
                    self._loaded.add(call.script.sha)
                _report(call.done, answer, None)
        except FAILURES as exc:
            self._reader = None
            if self._sent or self._batch:
                self._fail(exc)
            # else the server closed an idle connection (its `timeout`, say): nothing was
            # lost, and the next write opens it again.

    def _check(self, answers: int) -> None:
        """The timeout of the calls: one timer for all of them, not one per answer. Calls
        waiting and no answer since the last check (CALL_TIMEOUT_S ago) is an outage, so
        a call answered in CALL_TIMEOUT_S never fails and one that is not fails within
        twice that."""
        self._watchdog = None
        if not self._sent:
            return
        if self._answers == answers:
            self._fail(TimeoutError())
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            CALL_TIMEOUT_S, self._check, self._answers)

    def _fail(self, exc: BaseException) -> None:
        """The connection failed: every call written or queued fails with it (what was
        queued would wait for the same server, so a hung server costs a request one
        timeout, not two); the next call opens a new connection."""
        self.failed(exc)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        calls = [*self._sent, *self._batch]
        self._sent.clear()
        self._batch = []
        self._loaded.clear()            # a new server may not hold them
        if self._scripts.connection is not None:
            closing = asyncio.get_running_loop().create_task(
                _disconnect(self._scripts.connection))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        for call in calls:
            _report(call.done, None, exc)

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
        for task in (self._writer, self._reader, *self._closing):
            if task is not None:
                task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._scripts.aclose()
        await self.client.aclose()


def _report(done: Done, result: Any, exc: BaseException | None) -> None:
    """Hand a call its answer; a bug in one caller's handling must not lose the others'."""
    try:
        done(result, exc)
    except Exception:
        log.exception("state_call_handler_failed")


async def _disconnect(conn: AbstractConnection) -> None:
    with contextlib.suppress(*FAILURES):
        await conn.disconnect(nowait=True)


def _bulk(value: bytes) -> bytes:
    """One field of a command in Redis's wire format (RESP)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _encoded(value: Field) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):         # not a number Redis would read
        raise TypeError("a script argument cannot be a bool")
    if isinstance(value, float):
        return repr(value).encode()
    return b"%d" % value


def _describe(exc: BaseException) -> str:
    """What went wrong, without the URL (it may carry a password)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]


def text(value: Any) -> str:
    """A reply field as text (replies come as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
