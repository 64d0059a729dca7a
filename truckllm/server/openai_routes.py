"""The OpenAI-compatible /v1 API: parse -> authorise -> dispatch -> respond."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from truckllm import errors
from truckllm.dispatch import Call, RawReply, Reply, StreamReply, dispatch
from truckllm.limits import Limiter, estimate_prompt_tokens
from truckllm.providers.base import CallContext, Target
from truckllm.providers.media import MULTIPART_OPERATIONS
from truckllm.records import Exchange
from truckllm.server import anthropic_wire, metering
from truckllm.server.auth import authenticate
from truckllm.server.keys import EXCHANGE, LIMITER, RATELIMIT_HEADERS, ROUTING, STATE, TRANSPORT
from truckllm.server.middleware import gateway_headers
from truckllm.server.streaming import write_raw, write_stream
from truckllm.server.validation import check_fields, read_json, read_multipart
from truckllm.state import ClientKey, Route, State


async def _anthropic_relay(request: web.Request, op: str) -> web.StreamResponse:
    """The Anthropic Messages API (and its token counting, passed to an `anthropic`
    upstream): the same pipeline, Anthropic-shaped answers and errors."""
    try:
        return await _relay(request, op)
    except errors.GatewayError as exc:
        return anthropic_wire.error_response(exc, request[EXCHANGE])


async def _relay(request: web.Request, op: str) -> web.StreamResponse:
    app = request.app                                # a property with lookups: read once
    state = app[STATE].current                       # one snapshot for the whole request
    exchange = request[EXCHANGE]
    limiter = app[LIMITER]
    key = _authenticate(request, state, limiter)
    exchange.key_id = key.id if key else None
    read_body = read_multipart if op in MULTIPART_OPERATIONS else read_json
    body = await read_body(request, state.config.server.max_body_mb)
    check_fields(op, body)
    model: str = body["model"]
    route, targets = _route_for(state, key, model)
    exchange.alias = route.alias
    stream = bool(body.get("stream")) and op not in ("embeddings", "count_tokens")
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    include_usage = include_usage or (stream and op == "messages")   # message_delta carries usage
    exchange.stream = stream
    ctx = CallContext(model, exchange.request_id, int(time.time()), stream, include_usage, body,
                      _forwarded(request, op))
    admission = metering.admit(limiter, state, key, body, exchange)
    reply: Reply | StreamReply | RawReply | None = None
    try:
        if op == "count_tokens" and not _any_serves(state, targets, op):
            return _estimated_count(body, exchange)
        call = Call(state, op, body, route, targets, ctx, limiter, admission.estimate)
        reply = await dispatch(call, app[TRANSPORT], exchange, app[ROUTING])
        if isinstance(reply, Reply):
            return web.Response(body=reply.body, content_type="application/json",
                                headers=gateway_headers(exchange))
        if isinstance(reply, RawReply):
            return await write_raw(request, reply, exchange)
        if op == "messages":
            reply = anthropic_wire.reframe(reply)
        return await write_stream(request, reply, exchange)
    finally:   # after the last byte, an error, or the client leaving (streams included)
        metering.settle(admission, exchange, route, reply.upstream_use if reply else None)


def _any_serves(state: State, targets: tuple[Target, ...], op: str) -> bool:
    return any(op in state.providers[t.provider_id].spec.operations for t in targets)


def _estimated_count(body: dict[str, Any], exchange: Exchange) -> web.Response:
    """Token counting for an alias with no `anthropic` target: estimated here by the rule
    tpm limits use (characters / 4), marked as such. Clients ask it to manage their
    context window, where an estimate serves and a 400 only breaks them."""
    headers = {**gateway_headers(exchange), "x-truckllm-estimated": "true"}
    return web.Response(body=orjson.dumps({"input_tokens": estimate_prompt_tokens(body)}),
                        content_type="application/json", headers=headers)


# Client headers that mean something to a native upstream: Anthropic's beta features
# (Claude Code and other Anthropic SDK tools turn them on per request).
_FORWARDED_HEADERS = {"messages": ("anthropic-beta",), "count_tokens": ("anthropic-beta",)}
_NOTHING_FORWARDED: Mapping[str, str] = MappingProxyType({})


def _forwarded(request: web.Request, op: str) -> Mapping[str, str]:
    names = _FORWARDED_HEADERS.get(op)
    if names is None:
        return _NOTHING_FORWARDED
    return {name: request.headers[name] for name in names if name in request.headers}


def _authenticate(request: web.Request, state: State, limiter: Limiter) -> ClientKey | None:
    """The caller's key; from here on its responses carry its x-ratelimit-* headers."""
    key = authenticate(request, state)
    if key is not None:
        request[RATELIMIT_HEADERS] = metering.ratelimit_headers(limiter, state, key)
    return key


def _route_for(state: State, key: ClientKey | None, model: str) -> tuple[Route, Any]:
    resolved = state.resolve(model)
    if resolved is None:
        raise errors.NotFound(f"The model '{model}' does not exist.", param="model",
                              code="model_not_found")
    if key is not None and not key.may_use(model):
        raise errors.PermissionDenied(f"This API key may not use the model '{model}'.",
                                      param="model", code="model_not_allowed")
    return resolved


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE].current
    key = _authenticate(request, state, request.app[LIMITER])
    data = [_model_entry(state, route.alias, route) for route in state.all_routes
            if key is None or key.may_use(route.alias)]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE].current
    key = _authenticate(request, state, request.app[LIMITER])
    model = request.match_info["model"]
    resolved = state.resolve(model)
    if resolved is None or (key is not None and not key.may_use(model)):
        # A model the key may not use is answered as if it did not exist.
        raise errors.NotFound(f"The model '{model}' does not exist.", param="model",
                              code="model_not_found")
    return _json(_model_entry(state, model, resolved[0]))


def _model_entry(state: State, model: str, route: Route) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model, "object": "model", "created": int(state.loaded_at),
                             "owned_by": route.targets[0].provider_id}
    if route.config.context_window is not None:
        entry["context_window"] = route.config.context_window
    if route.config.pricing is not None:
        entry["pricing"] = route.config.pricing.model_dump(exclude_none=True)
    return entry


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def _json(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def routes() -> list[web.RouteDef]:
    # Handlers are `_relay` with the operation bound once here: a handler per operation
    # that awaited `_relay` would add a coroutine layer, paid on every resume.
    return [
        web.post("/v1/chat/completions", partial(_relay, op="chat")),
        web.post("/v1/completions", partial(_relay, op="completions")),
        web.post("/v1/embeddings", partial(_relay, op="embeddings")),
        web.post("/v1/messages", partial(_anthropic_relay, op="messages")),
        web.post("/v1/messages/count_tokens", partial(_anthropic_relay, op="count_tokens")),
        web.post("/v1/audio/transcriptions", partial(_relay, op="audio_transcriptions")),
        web.post("/v1/audio/translations", partial(_relay, op="audio_translations")),
        web.post("/v1/audio/speech", partial(_relay, op="audio_speech")),
        web.post("/v1/images/generations", partial(_relay, op="images")),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
        web.get("/health", health),
    ]
