"""The listener below HTTP routing: how many client connections the gateway holds at
once, and what a client gets when the HTTP layer itself refuses a request (a header
too large, bytes that are not HTTP): the OpenAI error shape, never aiohttp's plain text,
and nothing of the refused bytes in the log (they may hold a key).

Idle connections, and requests whose headers arrive too slowly, are closed after
`server.keepalive_timeout_s` (aiohttp's keep-alive timer runs from the moment a
connection opens); bodies that arrive too slowly are server.validation's concern.

This is the one module of the server that leans on aiohttp beyond its documented API
(pipeline/pushed_body.py does, for streamed upstream bodies), because aiohttp offers no
public hook for either job: it overrides `RequestHandler.handle_error` (the
only place a refused request's answer is made) and, as aiohttp's own `TCPSite` does,
sets `BaseSite._server` and reads `BaseSite._runner`. pyproject.toml pins aiohttp to the
releases this was checked against, and tests/server/test_connections.py fails loudly
when the installed aiohttp is outside that range or these parts have changed.

Imports only errors and the config schema from the package.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

from truckllm import errors
from truckllm.config.schema import ServerConfig

# The aiohttp releases whose internals this module was checked against (pyproject.toml
# pins the same range).
SUPPORTED_AIOHTTP = ((3, 14), (3, 15))      # 3.14.x

log = structlog.get_logger("truckllm.server")

# A refused connection gets its answer and may linger this long for the client to read
# it (closing at once, with its request unread, would reset the connection over it).
_REFUSAL_LINGER_S = 2.0
_MAX_LINGERING_REFUSALS = 256       # past this, refused connections are closed at once
_REFUSAL_LOG_EVERY_S = 60.0


def default_max_connections() -> int:
    """Half the process's open-file limit: upstream connections, the state file and the
    log always have the other half, however many clients connect."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // 2)


def handler_settings(server: ServerConfig) -> dict[str, Any]:
    """aiohttp's per-connection settings for the gateway's listeners."""
    return {"keepalive_timeout": server.keepalive_timeout_s, "access_log": None}


class JsonErrorsHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what the HTTP layer refuses as JSON."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:      # an answer started: nothing more to say
            return super().handle_error(request, status, exc, message)
        error = http_layer_error(status, exc)
        # One line, without the exception's text: it quotes the refused bytes (a header
        # value, maybe a key). Non-HTTP bytes (scanners, TLS) are routine on open ports.
        level = log.debug if isinstance(exc, BadHttpMethod) else log.warning
        level("malformed HTTP request refused", status=error.status, reason=error.message,
              peer=request.remote)
        response = web.Response(status=error.status, body=error.to_json(),
                                content_type="application/json")
        response.force_close()
        return response


def http_layer_error(status: int, exc: BaseException | None) -> errors.GatewayError:
    """The client-facing error for a request the HTTP layer could not take."""
    if isinstance(exc, LineTooLong) or (isinstance(exc, HttpProcessingError)
                                        and "too many headers" in (exc.message or "").lower()):
        return errors.HeadersTooLarge(
            "The request line or its header fields are too large (at most 8190 bytes each "
            "and 128 headers).")
    if isinstance(exc, BadHttpMethod):
        return errors.InvalidRequest("This is an HTTP port; the bytes received are not an "
                                     "HTTP request (TLS to a plain-HTTP listener?).")
    if isinstance(exc, HttpProcessingError) or status < 500:
        return errors.InvalidRequest("The request is not valid HTTP/1.1.")
    return errors.GatewayError("Internal error in TruckLLM while handling the connection.")


def _refusal_bytes() -> bytes:
    error = errors.Overloaded("The gateway holds as many client connections as it may "
                              "(server.max_connections); retry shortly.",
                              code="too_many_connections", retry_after_s=1)
    body = error.to_json()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


_REFUSAL = _refusal_bytes()


class _Refusal(asyncio.Protocol):
    """A connection past `server.max_connections`: answered 503 at once, then closed."""

    def __init__(self, site: GatewaySite) -> None:
        self._site = site
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods.)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.write(_REFUSAL)
        if self._site.lingering >= _MAX_LINGERING_REFUSALS or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._site.lingering += 1
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass            # the request is read and dropped: its answer is already out

    def eof_received(self) -> bool:
        if self._transport is not None:
            self._transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._site.lingering -= 1


class GatewaySite(web.BaseSite):
    """A TCP listener whose connections are handled by JsonErrorsHandler, at most
    `max_connections` at once; one more is answered 503 and closed."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 server: ServerConfig, *, reuse_port: bool = False) -> None:
        super().__init__(runner)
        self.host, self.port = host, port
        self.reuse_port = reuse_port        # --workers: every worker binds the same port
        self.max_connections = server.max_connections or default_max_connections()
        self.lingering = 0          # refused connections still being closed
        self._settings = handler_settings(server)
        self._refusal_logged_at = -_REFUSAL_LOG_EVERY_S

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.host, self.port,
                                                reuse_address=True,
                                                reuse_port=self.reuse_port or None)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> asyncio.Protocol:
        manager = self._runner.server
        assert manager is not None
        if len(manager.connections) >= self.max_connections:
            self._note_refusal()
            return _Refusal(self)
        return JsonErrorsHandler(manager, loop=asyncio.get_running_loop(), **self._settings)

    def _note_refusal(self) -> None:
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_EVERY_S:
            self._refusal_logged_at = now
            log.warning("connection_limit_reached", max_connections=self.max_connections,
                        detail="new connections are answered 503 until some close")
