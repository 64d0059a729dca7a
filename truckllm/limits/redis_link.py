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
Redis and Valkey reads). The scripts' connection is an asyncio protocol of its own
(`_Answers`), opened where redis-py would open it for the URL: the event loop hands it
what arrives and hiredis parses it, where redis-py's connection reads through a stream
reader, a task and several layers per answer and needs a task per write.
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

import hiredis
import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import InvalidResponse, RedisError, ResponseError

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
    format, after the script's name), or a whole command of its own. Its answer goes to
    `future` (a caller waiting) or to `done`."""

    __slots__ = ("done", "fields", "future", "script", "tail")

    def __init__(self, script: Script | None, tail: bytes, fields: int, done: Done | None,
                 future: asyncio.Future[Any] | None = None) -> None:
        self.script = script
        self.tail = tail
        self.fields = fields
        self.done = done
        self.future = future

    def command(self, loaded: set[str]) -> bytes:
        if self.script is None:
            return self.tail
        head = self.script.by_sha if self.script.sha in loaded else self.script.with_source
        return b"*%d\r\n%b%b" % (self.fields + 2, head, self.tail)

    def answer(self, result: Any, exc: BaseException | None) -> None:
        future = self.future
        if future is not None:
            if not future.done():
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
        elif self.done is not None:
            _report(self.done, result, exc)


_PING = b"*1\r\n$4\r\nPING\r\n"
_MORE = object()        # what the parser gives while an answer is still incomplete


class _Answers(asyncio.Protocol):
    """The scripts' connection as the event loop sees it: what arrives is parsed (hiredis)
    and each answer handed, in order, to the call written for it, as soon as it is read.
    Its own protocol rather than redis-py's connection: that one reads through a stream,
    a task and several layers per answer, and writes through a task per batch."""

    def __init__(self, link: StateLink) -> None:
        self.link = link
        self.parser = hiredis.Reader(replyError=ResponseError, protocolError=InvalidResponse,
                                     notEnoughData=_MORE)

    def data_received(self, data: bytes) -> None:
        link = self.link
        self.parser.feed(data)
        try:
            answer = self.parser.gets()
            while answer is not _MORE and link._answers_to is self:
                link._answered(answer)
                answer = self.parser.gets()
        except InvalidResponse as exc:      # not Redis's wire format: the connection fails
            if link._answers_to is self:
                link._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(self, exc)


class StateLink:
    """One client of the state server for the process, and its up/down state."""

    def __init__(self, url: str, failure: Literal["open", "closed"] = "open") -> None:
        # Commands of their own (reads, the probe, imports): each waits for its answer.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=CALL_TIMEOUT_S, socket_connect_timeout=CALL_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        # The scripts' connection: one (_Answers), so Redis runs them in the order they
        # were made; its calls are timed here, by one timer for all (see _check).
        self._server = _Server(url)
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
        self._transport: asyncio.Transport | None = None
        # The open connection's event loop, kept: asyncio.get_running_loop() costs a system
        # call (getpid) on every call before Python 3.12.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answers_to: _Answers | None = None    # the open connection's protocol
        self._connecting: asyncio.Task[None] | None = None
        self._flush_soon = False                    # a write of the batch is scheduled
        self._watchdog: asyncio.TimerHandle | None = None
        self._answers = 0                           # answers read, ever
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
        future: asyncio.Future[Any] = (self._loop or asyncio.get_running_loop()).create_future()
        self._queue(_script_call(script, keys, args, None, future))
        return await future

    def post(self, script: Script, keys: Keys | Sequence[str], args: Sequence[Field],
             done: Done, *, now: bool = False) -> None:
        """Queue a script without waiting for it: `done` gets its answer or failure.

        The calls made in one turn of the event loop are written together, on the one
        connection of the scripts, without waiting for the answers to earlier ones. Redis
        runs a connection's commands in the order it reads them, so it runs this
        process's calls in the order they were made: work posted at the end of a request
        (not waited for) is done before any admission made after it. `now`: written at
        once with what is queued (see `written`), if the connection is open."""
        call = _script_call(script, keys, args, done)
        if now and self._transport is not None:
            self._batch.append(call)
            self._flush()
            return
        self._queue(call)

    def _queue(self, call: _Call) -> None:
        self._batch.append(call)
        if self._loop is not None:
            if not self._flush_soon:
                self._flush_soon = True
                self._loop.call_soon(self._flush_scheduled)
        elif self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _flush_scheduled(self) -> None:
        self._flush_soon = False
        self._flush()

    def _flush(self) -> None:
        """Write what was queued, if the connection is open (else its opening does)."""
        transport, loop = self._transport, self._loop
        if not self._batch or transport is None or loop is None:
            return
        batch, self._batch = self._batch, []
        loaded = self._loaded
        self._sent.extend(batch)
        transport.write(b"".join([call.command(loaded) for call in batch]))
        if self._watchdog is None:
            self._watchdog = loop.call_later(
                CALL_TIMEOUT_S, self._check, self._answers)

    async def written(self) -> None:
        """Write every call queued so far to the server now, not waiting for answers: a
        request's end written before its response goes out reaches Redis before any
        admission the client's next request makes, on whichever instance. While the
        connection opens, waits for that, no longer than a call."""
        self._flush()
        if self._batch and self._connecting is not None:
            await asyncio.wait({self._connecting}, timeout=CALL_TIMEOUT_S)

    async def flushed(self) -> None:
        """Wait until every call queued so far has its answer or has failed (reads of
        what this process counted, and shutdown, wait for it)."""
        if not self._batch and not self._sent:
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(_Call(None, _PING, 1, None, future))    # answered after all before it
        with contextlib.suppress(*FAILURES):
            await future

    async def _connect(self) -> None:
        """Open the scripts' connection (a new one after any failure) and write what was
        queued meanwhile, after the login and the database choice."""
        try:
            protocol = _Answers(self)
            transport = await asyncio.wait_for(self._server.open(protocol), CALL_TIMEOUT_S)
        except FAILURES as exc:
            self._connecting = None
            self._fail(exc)
            return
        self._connecting = None
        self._transport, self._answers_to = transport, protocol
        self._loop = asyncio.get_running_loop()
        self._batch[:0] = [_Call(None, command, 1, self._refused)
                           for command in self._server.handshake]
        self._flush()

    def _refused(self, _: Any, exc: BaseException | None) -> None:
        """The answer to the login or the database choice: an error fails the connection."""
        if exc is not None and self._sent:
            self._fail(exc)

    def _answered(self, answer: Any) -> None:
        """The next answer on the open connection, for the oldest call written."""
        self._answers += 1
        if not self._sent:
            self._fail(ConnectionError("an answer to no call"))
            return
        call = self._sent.popleft()
        if isinstance(answer, ResponseError):
            if call.script is not None and str(answer).startswith("NOSCRIPT"):
                # Redis lost its scripts (SCRIPT FLUSH): this one goes again, with its
                # source, after the calls already written.
                self._loaded.clear()
                self._queue(call)
                return
            call.answer(None, answer)
            return
        if call.script is not None:
            self._loaded.add(call.script.sha)
        call.answer(answer, None)

    def _lost(self, protocol: _Answers, exc: Exception | None) -> None:
        """The connection closed: a failure if calls were waiting for it; else (the
        server's idle `timeout`, say) nothing was lost and the next call opens it again."""
        if protocol is not self._answers_to:
            return
        self._transport = self._answers_to = self._loop = None
        if self._sent:
            self._fail(exc or ConnectionError("closed by the server"))
        elif self._batch and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _check(self, answers: int) -> None:
        """The timeout of the calls: one timer for all of them, not one per answer. Calls
        waiting and no answer since the last check (CALL_TIMEOUT_S ago) is an outage, so
        a call answered in CALL_TIMEOUT_S never fails and one that is not fails within
        twice that."""
        self._watchdog = None
        if not self._sent or self._loop is None:
            return
        if self._answers == answers:
            self._fail(TimeoutError())
            return
        self._watchdog = self._loop.call_later(
            CALL_TIMEOUT_S, self._check, self._answers)

    def _fail(self, exc: BaseException) -> None:
        """The connection failed: every call written or queued fails with it (what was
        queued would wait for the same server, so a hung server costs a request one
        timeout, not two); the next call opens a new connection."""
        self.failed(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        calls = [*self._sent, *self._batch]
        self._sent.clear()
        self._batch = []
        self._loaded.clear()            # a new server may not hold them
        transport, self._transport, self._answers_to = self._transport, None, None
        self._loop = None
        if transport is not None:
            transport.abort()
        for call in calls:
            call.answer(None, exc)

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
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()
        self._transport = self._answers_to = self._loop = None
        await self.client.aclose()


def _report(done: Done, result: Any, exc: BaseException | None) -> None:
    """Hand a call its answer; a bug in one caller's handling must not lose the others'."""
    try:
        done(result, exc)
    except Exception:
        log.exception("state_call_handler_failed")


class _Server:
    """Where the scripts' connection goes, read from the URL as redis-py reads it (TCP,
    TLS or a unix socket), and the commands that start it: the login and the database."""

    def __init__(self, url: str) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        kind = options.pop("connection_class", Connection)
        self.path: str | None = options.get("path")
        self.host: str = options.get("host", "localhost")
        self.port: int = options.get("port", 6379)
        # redis-py's TLS settings, from the URL's query (its defaults: verified)
        self.tls = SSLConnection(**options).ssl_context.get() if kind is SSLConnection else None
        handshake: list[bytes] = []
        password, username = options.get("password"), options.get("username")
        if password is not None:
            handshake.append(_command(b"AUTH", *([username] if username else []), password))
        if options.get("db"):
            handshake.append(_command(b"SELECT", str(options["db"])))
        self.handshake = handshake

    async def open(self, protocol: _Answers) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            transport, _ = await loop.create_unix_connection(lambda: protocol, self.path)
        else:
            transport, _ = await loop.create_connection(lambda: protocol, self.host,
                                                        self.port, ssl=self.tls)
        return transport


def _command(*words: bytes | str) -> bytes:
    encoded = [w.encode() if isinstance(w, str) else w for w in words]
    return b"".join([b"*%d\r\n" % len(encoded), *map(_bulk, encoded)])


def _script_call(script: Script, keys: Keys | Sequence[str], args: Sequence[Field],
                 done: Done | None, future: asyncio.Future[Any] | None = None) -> _Call:
    """A call of `script` with its keys and arguments in the wire format."""
    if not isinstance(keys, Keys):
        keys = Keys(keys)
    tail = b"".join([keys.encoded, *[_bulk(_encoded(arg)) for arg in args]])
    return _Call(script, tail, keys.fields + len(args), done, future)


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
