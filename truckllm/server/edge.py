"""The wrapper around every route handler: request id, the Exchange that records the
request, the one error envelope (every failure leaves as an OpenAI-shaped JSON error,
unknown paths and methods included), TruckLLM's response headers, and the final record.

Handlers are wrapped when the routes are registered rather than by an aiohttp
middleware, so that each handler receives its Exchange as an argument. Both the client
app and the admin-only app are built this way, so both answer errors in one shape.
Imports nothing from pipeline beyond the record, nor from providers or limits.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import istr
from yarl import URL

from truckllm import errors
from truckllm.pipeline.record import Exchange
from truckllm.server.keys import INFLIGHT, OBSERVERS, TRACING

_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")     # printable, no spaces, bounded
_random_bits = random.getrandbits
_UNRECORDED_PATHS = frozenset({"/health", "/metrics"})
CLIENT_CLOSED_REQUEST = 499
# TruckLLM's header names, case-folded once rather than by every response they go into.
_REQUEST_ID = istr("x-request-id")
_PROVIDER = istr("x-truckllm-provider")
_MODEL = istr("x-truckllm-model")
_ATTEMPTS = istr("x-truckllm-attempts")
_OVERHEAD_MS = istr("x-truckllm-overhead-ms")
_DROPPED_TOOLS = istr("x-truckllm-dropped-tools")
_JSON = ((hdrs.CONTENT_TYPE, "application/json"),)
log = structlog.get_logger("truckllm.server")

# A handler behind the wrapper: it gets the request's Exchange as an argument.
ExchangeHandler = Callable[[web.Request, Exchange], Awaitable[web.StreamResponse]]


class ExchangeRoute(NamedTuple):
    method: str
    path: str
    handler: ExchangeHandler
    kwargs: Mapping[str, Any] = MappingProxyType({})     # for add_route: name=, expect_handler=


def plain_routes(routes: Iterable[web.RouteDef]) -> list[ExchangeRoute]:
    """aiohttp route definitions, whose handlers take the request alone, as ExchangeRoutes."""
    return [ExchangeRoute(route.method, route.path, _without_exchange(route.handler), route.kwargs)
            for route in routes]


def _without_exchange(handler: Handler) -> ExchangeHandler:
    def handle(request: web.Request, exchange: Exchange) -> Awaitable[web.StreamResponse]:
        return handler(request)
    return handle


def add_routes(app: web.Application, routes: Iterable[ExchangeRoute]) -> None:
    """Register `routes`, each handler wrapped by `with_exchange`, then, last, a resource
    taking every path and method that no other route takes."""
    # As RouteDefs, so that each is registered as aiohttp's own would be (a GET also
    # answers HEAD).
    app.add_routes(web.RouteDef(method, path, with_exchange(app, handler), dict(kwargs))
                   for method, path, handler, kwargs in routes)
    app.router.register_resource(_EverythingElse(with_exchange(app, _without_exchange(unrouted))))


class _EverythingElse(web.AbstractResource):
    """The resource of last resort: it matches every request, even `OPTIONS *`, which has
    no path a route could match. Built on aiohttp's documented resource interface; the
    router tries it after every resource of a longer prefix, since it is indexed under "/"."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._route = web.ResourceRoute(hdrs.METH_ANY, handler, self)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, *args: str, **kwargs: str) -> URL:
        return URL("/")

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the catch-all resource has no prefix")

    def raw_match(self, path: str) -> bool:
        return True

    def get_info(self) -> Any:      # aiohttp's own return type is private
        return {"path": "*"}

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), {hdrs.METH_ANY}

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.ResourceRoute]:
        return iter((self._route,))


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


def with_exchange(app: web.Application, handler: ExchangeHandler) -> Handler:
    """`handler` inside the request id, the Exchange, the error envelope and the record."""
    inflight = app[INFLIGHT]
    observers = app[OBSERVERS]
    tracing = app[TRACING]              # `on` only when server.otel is configured

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        # The client's own request id when it is a sane one; else 96 random bits as 24 hex
        # digits from the random module: an id needs uniqueness, not secrecy, so no system
        # call for randomness per request.
        given = request.headers.get("x-request-id")
        if given and _CLIENT_REQUEST_ID.fullmatch(given):
            exchange = Exchange(given, request.method, path, True)
        else:
            exchange = Exchange(_random_bits(96).to_bytes(12).hex(), request.method, path)
        recorded = path not in _UNRECORDED_PATHS and not path.startswith("/admin/")
        if recorded:                    # scrapes and admin calls are not traffic
            inflight.count += 1
            if tracing.on:
                exchange.trace = tracing.start(request.headers, request.method, path)
        status = CLIENT_CLOSED_REQUEST
        try:
            try:
                response = await handler(request, exchange)
            except BaseException as exc:
                response = _failure_response(request, exc, exchange)
            status = exchange.status or response.status
            if not response.prepared:
                # Every answer not yet sent carries the request id and, after auth, the
                # key's x-ratelimit-* headers, counted after the request was settled (so
                # they include it).
                headers = response.headers
                headers[_REQUEST_ID] = exchange.request_id
                if exchange.ratelimit_reader is not None:
                    headers.update(exchange.ratelimit_reader())
            return response
        finally:
            if recorded:
                inflight.count -= 1
                record = exchange.finish(status)
                for observe in observers:
                    observe(record)
                if exchange.trace is not None:
                    exchange.trace.finish(record)

    return handle


def ratelimit_headers_now(exchange: Exchange) -> dict[str, str]:
    """The caller's x-ratelimit-* headers as they stand; {} before auth or for keys
    without limits. For answers sent before the request is settled (streams)."""
    reader = exchange.ratelimit_reader
    return reader() if reader is not None else {}


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


def json_answer(body: bytes, exchange: Exchange, extra: tuple[tuple[str, str], ...] = ()) -> web.Response:
    """A 200 JSON answer with TruckLLM's headers (then `extra`, then Content-Type)."""
    # The pairs as they are: web.Response makes its own CIMultiDict of whatever it gets.
    headers = gateway_header_items(exchange)
    headers += extra
    headers += _JSON
    return web.Response(body=body, headers=headers)


def gateway_headers(exchange: Exchange) -> dict[str, str]:
    """TruckLLM's headers for an answer, to merge with its others."""
    return dict(gateway_header_items(exchange))


def gateway_header_items(exchange: Exchange) -> list[tuple[str, str]]:
    """The request id; for a routed request also the provider, model, attempts and
    TruckLLM's own time so far."""
    if exchange.provider_id is not None:
        items: list[tuple[str, str]] = [(_REQUEST_ID, exchange.request_id), (_PROVIDER, exchange.provider_id),
                                        (_MODEL, exchange.upstream_model or ""),
                                        (_ATTEMPTS, str(exchange.attempts)),
                                        (_OVERHEAD_MS, f"{exchange.overhead_so_far() * 1000:.3f}")]
        if exchange.dropped_tools:
            items.append((_DROPPED_TOOLS, ",".join(exchange.dropped_tools)))
        return items
    if exchange.alias is not None:
        # Routed, but answered without calling upstream (every target cooling, a limit).
        return [(_REQUEST_ID, exchange.request_id), (_ATTEMPTS, "0"),
                (_OVERHEAD_MS, f"{exchange.overhead_so_far() * 1000:.3f}")]
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
