"""The gateway around every route handler of the client-facing app: request id, the
Exchange that records the request, the error envelope (every failure leaves as an
OpenAI-shaped JSON error, unknown paths and methods included), the gateway's response
headers, and the final record.

Applied to each handler when the routes are registered, not as an aiohttp middleware,
which would cost aiohttp's middleware machinery on every request."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import structlog
from aiohttp import web
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, istr

from truckllm import errors
from truckllm.pipeline.record import Exchange
from truckllm.server.keys import INFLIGHT, OBSERVERS, TRACING

_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")     # printable, no spaces, bounded
_random_bits = random.getrandbits
_UNRECORDED_PATHS = frozenset({"/health", "/metrics"})
CLIENT_CLOSED_REQUEST = 499
log = structlog.get_logger("truckllm.server")

# Header names as multidict's case-insensitive strings: a CIMultiDict built from them, or
# looked up by them, does not fold their case again. On the wire they are the same text.
_REQUEST_ID, _PROVIDER, _MODEL, _ATTEMPTS, _OVERHEAD, _CONTENT_TYPE = map(istr, (
    "x-request-id", "x-truckllm-provider", "x-truckllm-model", "x-truckllm-attempts",
    "x-truckllm-overhead-ms", "Content-Type"))


# A handler behind the gateway: it gets the request's Exchange from the gateway as an
# argument (request storage would cost two Python calls per request to set and read it).
ExchangeHandler = Callable[[web.Request, Exchange], Awaitable[web.StreamResponse]]


class GatewayRoute(NamedTuple):
    method: str
    path: str
    handler: ExchangeHandler
    kwargs: Mapping[str, Any] = MappingProxyType({})     # for add_route: name=, expect_handler=


def plain_routes(routes: Iterable[web.RouteDef]) -> list[GatewayRoute]:
    """aiohttp route definitions, whose handlers take the request alone, as gateway routes."""
    return [GatewayRoute(route.method, route.path, _without_exchange(route.handler), route.kwargs)
            for route in routes]


def _without_exchange(handler: Handler) -> ExchangeHandler:
    def handle(request: web.Request, exchange: Exchange) -> Awaitable[web.StreamResponse]:
        return handler(request)         # its coroutine, awaited by the gateway: no extra layer
    return handle


def add_gateway_routes(app: web.Application, routes: Iterable[GatewayRoute]) -> None:
    """Register `routes` with every handler wrapped by `gateway_handler`, then, last, a
    route for every path and method that no other route takes.

    Wrapping at registration instead of an aiohttp middleware saves, on every request,
    aiohttp's middleware chain (a cached partial and a middleware of its own that resets
    `request.app`) and two coroutine layers."""
    # As RouteDefs, so that each is registered as aiohttp's own would be (a GET also
    # answers HEAD).
    app.add_routes(web.RouteDef(method, path, gateway_handler(app, handler), dict(kwargs))
                   for method, path, handler, kwargs in routes)
    everything_else = _AnyPath()
    app.router.register_resource(everything_else)
    everything_else.add_route("*", gateway_handler(app, _without_exchange(unrouted)))


class _AnyPath(web.PlainResource):
    """Matches every path, even `*` (OPTIONS *). aiohttp's router indexes it under "/",
    which it tries after every longer prefix of a path: the resource of last resort."""

    def __init__(self) -> None:
        super().__init__("/")

    def _match(self, path: str) -> dict[str, str]:
        return {}


async def unrouted(request: web.Request) -> web.StreamResponse:
    """404 for an unknown path, 405 for a known path asked with the wrong method: what
    aiohttp's router answers when no route matches, asked of the other routes again."""
    this = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not this:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def gateway_handler(app: web.Application, handler: ExchangeHandler) -> Handler:
    """`handler` inside the request id, the Exchange, the error envelope and the record."""
    inflight = app[INFLIGHT]
    observers = app[OBSERVERS]          # the list itself, read once: it is never replaced
    tracing = app[TRACING]              # `on` only when server.otel is configured

    async def gateway(request: web.Request) -> web.StreamResponse:
        path = request.path         # a property: read once
        # The client's own request id when it is a sane one; else 96 random bits as 24 hex
        # digits, from the random module's generator rather than os.urandom: no system call
        # per request, and an id needs uniqueness, not secrecy. (Here, not in a function
        # of its own: one call fewer per request.)
        given = request.headers.get(_REQUEST_ID)
        request_id = (given if given and _CLIENT_REQUEST_ID.fullmatch(given)
                      else _random_bits(96).to_bytes(12).hex())
        exchange = Exchange(request_id, request.method, path)
        recorded = path not in _UNRECORDED_PATHS and not path.startswith("/admin/")
        inflight[0] += recorded         # scrapes and admin calls are not traffic
        if tracing.on and recorded:
            exchange.trace = tracing.start(request.headers, request.method, path)
        status = CLIENT_CLOSED_REQUEST
        try:
            try:
                response = await handler(request, exchange)
            except BaseException as exc:
                response = _failure_response(request, exc, exchange)
            status = exchange.status or response.status
            if response.__class__ is GatewayResponse:
                # Built with the gateway headers: only the key's x-ratelimit-* ones, counted
                # after settling, are still to come (and most keys send none).
                if exchange.ratelimit_headers is not None:
                    response.headers.update(exchange.ratelimit_headers())
            elif not response.prepared:
                _add_gateway_headers(response.headers, exchange)
            return response
        finally:
            inflight[0] -= recorded
            if recorded:
                record = exchange.finish(status)
                for observe in observers:
                    observe(record)
                if exchange.trace is not None:
                    exchange.trace.finish(record)

    return gateway


def _add_gateway_headers(headers: CIMultiDict[str], exchange: Exchange) -> None:
    """Every answer not yet sent carries the request id and, after auth, the key's
    x-ratelimit-* headers, counted after the request was settled."""
    headers[_REQUEST_ID] = exchange.request_id
    if exchange.ratelimit_headers is not None:
        headers.update(exchange.ratelimit_headers())


def ratelimit_headers_of(exchange: Exchange) -> dict[str, str]:
    """The caller's x-ratelimit-* headers, live; {} before auth or for keys without limits."""
    headers = exchange.ratelimit_headers
    return headers() if headers is not None else {}


def _failure_response(request: web.Request, exc: BaseException, exchange: Exchange) -> web.Response:
    """The error envelope for what a handler raised (called in its `except`): every
    failure becomes an OpenAI-shaped answer, but a client leaving (and anything that is
    not an Exception) is raised on."""
    if isinstance(exc, errors.GatewayError):
        return error_response(exc, exchange)
    if isinstance(exc, web.HTTPException):
        return error_response(_from_http_exception(request, exc), exchange)
    if isinstance(exc, asyncio.CancelledError | ConnectionResetError):
        exchange.error_reason = "client_disconnected"
        raise exc
    if not isinstance(exc, Exception):
        raise exc
    log.exception("unhandled_error", request_id=exchange.request_id, path=request.path)
    return error_response(errors.GatewayError("Internal error in TruckLLM; see its log for "
                                              f"request {exchange.request_id}."), exchange)


def error_response(exc: errors.GatewayError, exchange: Exchange) -> web.Response:
    exchange.error_reason = exchange.error_reason or exc.type
    headers = {**exc.headers(), **gateway_headers(exchange)}
    return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json",
                        headers=headers)


class GatewayResponse(web.Response):
    """A 200 JSON answer carrying the gateway headers, then Content-Type: what
    `web.Response(body=body, content_type="application/json", headers=...)` builds, in one
    Python frame instead of four and without copying the headers (~14k → ~6k instructions
    per answer). It sets exactly the attributes web.Response's constructor sets for such a
    body, which are aiohttp's private ones: at import, `_sets_what_aiohttp_sets` checks
    that they still are, and with an aiohttp release that sets others, the answer is built
    by web.Response's own constructor instead (slower, never broken).
    tests/test_gateway_response.py fails on such a release, so it is noticed."""

    direct = True           # set at import: the attributes below are all aiohttp sets

    def __init__(self, body: bytes, exchange: Exchange, extra: tuple[tuple[str, str], ...] = ()) -> None:
        headers = CIMultiDict(gateway_header_items(exchange))
        if extra:
            headers.extend(extra)
        if not GatewayResponse.direct:
            super().__init__(body=body, headers=headers, content_type="application/json")
            return
        headers.add(_CONTENT_TYPE, "application/json")
        self._state = {}
        self._headers = headers
        self._status = 200
        self._reason = "OK"
        self._body = body
        self._compressed_body = None
        self._zlib_executor_size = MAX_SYNC_CHUNK_SIZE
        self._zlib_executor = None


def _sets_what_aiohttp_sets() -> bool:
    """Whether GatewayResponse, built directly, equals what web.Response's constructor
    builds: the same attributes with the same values, the same headers in the same order."""
    exchange = Exchange("probe", "POST", "/v1/chat/completions")
    ours = GatewayResponse(b"{}", exchange, (("x-probe", "1"),))
    theirs = web.Response(body=b"{}", content_type="application/json",
                          headers={**gateway_headers(exchange), "x-probe": "1"})
    return (list(ours.headers.items()) == list(theirs.headers.items())
            and {**vars(ours), "_headers": None} == {**vars(theirs), "_headers": None})


def gateway_headers(exchange: Exchange) -> dict[str, str]:
    """The gateway's headers for an answer, to merge with its others."""
    return dict(gateway_header_items(exchange))


def gateway_header_items(exchange: Exchange) -> list[tuple[str, str]]:
    """The request id; for a routed request also the provider, model, attempts and
    TruckLLM's own time so far."""
    if exchange.provider_id is not None:
        return [(_REQUEST_ID, exchange.request_id), (_PROVIDER, exchange.provider_id),
                (_MODEL, exchange.upstream_model or ""), (_ATTEMPTS, str(exchange.attempts)),
                (_OVERHEAD, f"{exchange.overhead_s() * 1000:.3f}")]
    if exchange.alias is not None:
        # Routed, but answered without calling upstream (every target cooling, a limit).
        return [(_REQUEST_ID, exchange.request_id), (_ATTEMPTS, "0"),
                (_OVERHEAD, f"{exchange.overhead_s() * 1000:.3f}")]
    return [(_REQUEST_ID, exchange.request_id)]


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> errors.GatewayError:
    if exc.status == 404:
        return errors.NotFound(f"Unknown path: {request.method} {request.path}", code="unknown_url")
    if exc.status == 405:
        return errors.MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if exc.status == 413:
        return errors.PayloadTooLarge("The request body is too large.")
    error = errors.InvalidRequest(exc.reason or f"HTTP {exc.status}")
    error.status = exc.status
    return error


GatewayResponse.direct = _sets_what_aiohttp_sets()
