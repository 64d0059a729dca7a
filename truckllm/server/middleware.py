"""The one middleware: request id, the Exchange that records the request, the error
envelope (every failure leaves as an OpenAI-shaped JSON error), and the final record."""

from __future__ import annotations

import asyncio
import os
import re

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from truckllm import errors
from truckllm.records import Exchange
from truckllm.server.keys import EXCHANGE, INFLIGHT, OBSERVERS, ratelimit_headers_of

_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")     # printable, no spaces, bounded
_UNRECORDED_PATHS = frozenset({"/health", "/metrics"})
CLIENT_CLOSED_REQUEST = 499
log = structlog.get_logger("truckllm.server")


def request_id_for(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID")
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(12).hex()


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path, app = request.path, request.app       # properties: read once
    exchange = Exchange(request_id_for(request), request.method, path)
    request[EXCHANGE] = exchange
    inflight = app[INFLIGHT]
    recorded = path not in _UNRECORDED_PATHS and not path.startswith("/admin/")
    inflight[0] += recorded         # scrapes and admin calls are not traffic
    status = CLIENT_CLOSED_REQUEST
    try:
        response = await _handle(request, handler, exchange)
        status = response.status if not exchange.status else exchange.status
        if not response.prepared:
            response.headers["x-request-id"] = exchange.request_id
            response.headers.update(ratelimit_headers_of(request))
        return response
    finally:
        inflight[0] -= recorded
        if recorded:
            record = exchange.finish(status)
            for observe in app[OBSERVERS]:
                observe(record)


async def _handle(request: web.Request, handler: Handler, exchange: Exchange) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.GatewayError as exc:
        return error_response(exc, exchange)
    except web.HTTPException as exc:
        return error_response(_from_http_exception(request, exc), exchange)
    except (asyncio.CancelledError, ConnectionResetError):
        exchange.error_reason = "client_disconnected"
        raise
    except Exception:
        log.exception("unhandled_error", request_id=exchange.request_id, path=request.path)
        return error_response(errors.GatewayError("Internal error in TruckLLM; see its log for "
                                                  f"request {exchange.request_id}."), exchange)


def error_response(exc: errors.GatewayError, exchange: Exchange) -> web.Response:
    exchange.error_reason = exchange.error_reason or exc.type
    headers = {**exc.headers(), **gateway_headers(exchange)}
    return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json",
                        headers=headers)


def gateway_headers(exchange: Exchange) -> dict[str, str]:
    headers = {"x-request-id": exchange.request_id}
    if exchange.provider_id is not None:
        headers["x-truckllm-provider"] = exchange.provider_id
        headers["x-truckllm-model"] = exchange.upstream_model or ""
        headers["x-truckllm-attempts"] = str(exchange.attempts)
        headers["x-truckllm-overhead-ms"] = f"{exchange.overhead_s() * 1000:.3f}"
    elif exchange.alias is not None:
        # Routed, but answered without calling upstream (every target cooling, a limit).
        headers["x-truckllm-attempts"] = "0"
        headers["x-truckllm-overhead-ms"] = f"{exchange.overhead_s() * 1000:.3f}"
    return headers


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
