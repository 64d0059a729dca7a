"""The only module that talks to upstreams over the network: one pooled aiohttp session
per provider. (A provider that answers in-process brings its own UpstreamTransport.)

`fetch` returns a whole answer (status, headers, body) with its connection back in the
pool. `send` returns an UpstreamResponse whose status and headers are known; the caller
reads or streams the body and must `close()` it (closing early drops the connection, which
is how an abandoned request is cancelled upstream). Failures become TransportError with a
kind dispatch can classify: "connect" or "timeout".

Sessions keep no cookies (`DummyCookieJar`): a gateway's upstream session serves every
client, so a cookie one answer set must not go out with another client's request.

Timeouts per provider: `connect_timeout_s` (opening the connection, a "connect"
failure), `timeout_s` (the whole request, body or stream included) and `idle_timeout_s`
(the longest gap between two stream chunks, once the first has arrived). Time to first byte is dispatch's, since
for a stream it ends at the first translated event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping

import aiohttp
from multidict import CIMultiDict, istr

from truckllm import __version__
from truckllm.config.schema import ProviderConfig
from truckllm.pipeline import pushed_body
from truckllm.providers.base import Target, UpstreamRequest, UpstreamResponse, WholeResponse
from truckllm.runtime.state import CompiledProvider


class TransportError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind            # "connect" | "timeout"


class _HttpResponse:
    """An aiohttp response seen through the UpstreamResponse protocol."""

    __slots__ = ("_clock", "_content", "_done", "_idle_timeout_s", "_response", "_sink",
                 "_waiting_since", "_watch", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout_s: float) -> None:
        self._response = response
        self._content = response.content
        self._idle_timeout_s = idle_timeout_s
        self._done = False
        self._watch: asyncio.TimerHandle | None = None
        self._clock = asyncio.get_running_loop().time
        self._waiting_since: float | None = None    # loop time a marked wait for a chunk began
        self._sink: pushed_body.Sink | None = None
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            body = await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _read_failed(exc) from None
        self._done = True
        return body

    async def read_chunk(self, marked: bool = True) -> bytes:
        """The body's next chunk (b"" at its end). A marked wait counts towards the idle
        limit; the wait for the first chunk is not marked: it is time to first token
        (dispatch bounds it, and a reasoning model may think long)."""
        content = self._content
        try:
            if self._sink is not None:
                # What is buffered goes first, read while chunks are not offered: taking
                # it can make aiohttp parse more of the body at once, which then queues
                # behind it. Chunks are offered only while the buffer is empty.
                chunk = content.read_nowait()
                if chunk or content.at_eof():
                    return chunk
            if marked:
                self._waiting_since = self._clock()
            return await content.readany()
        except TimeoutError:
            raise TransportError("timeout", "upstream stream timed out") from None
        except aiohttp.ClientError as exc:
            raise TransportError("connect", f"upstream stream broke: {type(exc).__name__}") from None
        finally:
            self._waiting_since = None

    def push_to(self, sink: pushed_body.Sink) -> bool:
        """Offers the body's chunks to `sink` as they arrive while a marked `read_chunk`
        waits on an empty buffer (pipeline.pushed_body), rather than waking that read for
        each: in the order they arrive. A chunk the sink takes counts as data flowing for
        the idle limit; one it declines, and every chunk after it until the read returns,
        is what the read returns; an exception the sink raises is what it raises. False
        when this body cannot be pushed."""
        if not pushed_body.attach(self._content, self._offer):
            return False
        self._sink = sink
        return True

    def _offer(self, chunk: bytes) -> bool:
        sink = self._sink
        if self._waiting_since is None or sink is None:
            return False        # no read waiting, or one about to return what was declined
        try:
            taken = sink(chunk)
        except Exception as exc:
            self._waiting_since = None
            self._content.set_exception(exc)
            return True
        if not taken:
            self._waiting_since = None
            return False
        self._waiting_since = self._clock()
        return True

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            chunk = await self.read_chunk(marked=False)
            if chunk:
                self.watch_idle()       # the idle limit starts once data flows
            while chunk:
                yield chunk
                chunk = await self.read_chunk()
        finally:
            self._stop_watch()

    def watch_idle(self) -> None:
        """One timer per stream (`_check_idle`) fails a marked wait that has lasted
        `idle_timeout_s`: arming and cancelling a timer per chunk cost more than all the
        rest of the relay's own work per chunk."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self._idle_timeout_s, self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        since, now = self._waiting_since, loop.time()
        if since is not None and now - since >= self._idle_timeout_s:
            self._watch = None
            self._content.set_exception(TransportError(
                "timeout", f"upstream stream stalled: no data for {self._idle_timeout_s:g} s"))
            return
        # Not reading (the client is being written to), or not for long enough yet.
        self._watch = loop.call_at((now if since is None else since) + self._idle_timeout_s,
                                   self._check_idle)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def close(self) -> None:
        if self._watch is not None:
            self._stop_watch()
        if self._sink is not None:
            self._sink = None
            pushed_body.detach(self._content)
        # A fully read response goes back to the pool; an abandoned one drops its
        # connection so the upstream stops generating.
        if self._done or self._content.at_eof():
            self._response.release()
        else:
            self._response.close()


_SESSION_HEADERS = {"User-Agent": f"TruckLLM/{__version__}"}
_REQUEST_ID = istr("x-request-id")      # case-folded once, not on every request


class _Pool:
    """One provider's pooled session, and the timeouts of the provider config last seen
    (built once per config, not per request). (URLs go as text: yarl keeps the URLs it
    has parsed, so a URL object of ours would save aiohttp next to nothing.)"""

    __slots__ = ("config", "session", "timeout")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.config: ProviderConfig | None = None
        self.timeout = aiohttp.ClientTimeout()

    def adopt(self, provider: CompiledProvider) -> None:
        self.config = provider.config
        self.timeout = aiohttp.ClientTimeout(total=provider.timeout_s,
                                             sock_connect=provider.config.connect_timeout_s)


class Transport:
    """Pooled sessions keyed by provider id; sessions of vanished providers are retired."""

    def __init__(self) -> None:
        self._pools: dict[str, _Pool] = {}
        self._retired: list[aiohttp.ClientSession] = []
        self._closing: set[asyncio.Task[None]] = set()

    def _pool(self, provider: CompiledProvider) -> _Pool:
        pool = self._pools.get(provider.id)
        if pool is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            # Our own User-Agent rather than aiohttp's, set once on the session: asking
            # aiohttp to skip its default instead costs a header-set copy per request.
            pool = self._pools[provider.id] = _Pool(aiohttp.ClientSession(
                connector=connector, auto_decompress=True, headers=_SESSION_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar()))
        pool.adopt(provider)
        return pool

    def _request(self, provider: CompiledProvider, request: UpstreamRequest,
                 request_id: str) -> Awaitable[aiohttp.ClientResponse]:
        """aiohttp's request coroutine, for `send` and `fetch` to await."""
        pool = self._pools.get(provider.id)
        if pool is None or pool.config is not provider.config:  # first use, or a reloaded config
            pool = self._pool(provider)
        # Headers handed over as aiohttp's own CIMultiDict: given a dict, aiohttp converts
        # it into one first (the same headers either way).
        headers = CIMultiDict(request.headers)
        headers[_REQUEST_ID] = request_id
        return pool.session.request(request.method, request.url, data=request.body, headers=headers,
                                    timeout=pool.timeout, allow_redirects=False)

    async def send(self, provider: CompiledProvider, target: Target, request: UpstreamRequest,
                   request_id: str) -> UpstreamResponse:
        try:
            response = await self._request(provider, request, request_id)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _send_failed(provider, exc) from None
        return _HttpResponse(response, provider.config.idle_timeout_s)

    async def fetch(self, provider: CompiledProvider, target: Target, request: UpstreamRequest,
                    request_id: str) -> WholeResponse:
        """`send` and read the whole body."""
        try:
            response = await self._request(provider, request, request_id)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _send_failed(provider, exc) from None
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _read_failed(exc) from None       # read() has closed the response
        # No release(): read() returns once the body has ended, and aiohttp has then put
        # the connection back in the pool and marked the response closed itself.
        return response.status, response.headers, body

    def retain(self, provider_ids: Iterable[str]) -> None:
        """After a reload: keep sessions of providers that still exist; close the others
        once no request on them can still be running (see `_retire`)."""
        keep = set(provider_ids)
        for provider_id in [p for p in self._pools if p not in keep]:
            self._retire(self._pools.pop(provider_id))

    def _retire(self, pool: _Pool) -> None:
        """A vanished provider's session is closed after its `timeout_s`, the longest any
        request on it (streams included) may take: requests in flight finish on it, and
        its connections and connector do not stay open until shutdown."""
        session = pool.session
        self._retired.append(session)
        loop = asyncio.get_running_loop()

        def close() -> None:
            if session in self._retired:
                self._retired.remove(session)
                task = loop.create_task(session.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

        loop.call_later(pool.timeout.total or 0, close)

    async def close(self) -> None:
        sessions = [*(pool.session for pool in self._pools.values()), *self._retired]
        self._pools.clear()
        self._retired.clear()
        await asyncio.gather(*(s.close() for s in sessions), *self._closing)


def _send_failed(provider: CompiledProvider, exc: BaseException) -> TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportError("connect", f"cannot reach provider {provider.id!r}: connect timed "
                              f"out after {provider.config.connect_timeout_s:g} s")
    if isinstance(exc, TimeoutError):
        return TransportError("timeout", f"provider {provider.id!r} timed out")
    return TransportError("connect", f"cannot reach provider {provider.id!r}: {type(exc).__name__}")


def _read_failed(exc: BaseException) -> TransportError:
    if isinstance(exc, TimeoutError):
        return TransportError("timeout", "upstream timed out while sending its response")
    return TransportError("connect", f"upstream connection failed: {type(exc).__name__}")
