"""The OpenAI-compatible /v1 API: parse -> authorise -> dispatch -> respond."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from truckllm import errors
from truckllm.config.globs import is_wildcard
from truckllm.limits import Limiter, estimate_prompt_tokens, metering
from truckllm.pipeline.dispatch import Call, RawReply, Reply, StreamReply, dispatch
from truckllm.pipeline.record import Exchange
from truckllm.pipeline.router import Routing
from truckllm.pipeline.transport import Transport
from truckllm.protocols.anthropic_messages import anthropic_error
from truckllm.providers.base import CallContext, Operation, Target
from truckllm.providers.shared.media import MULTIPART_OPERATIONS
from truckllm.runtime.state import ClientKey, Route, State, StateHolder
from truckllm.server.auth import authenticate
from truckllm.server.edge import ExchangeRoute, gateway_headers, json_answer, plain_routes
from truckllm.server.keys import LIMITER, ROUTING, STATE, TRANSPORT
from truckllm.server.streaming import write_raw, write_stream
from truckllm.server.validation import check_fields, read_json, read_multipart


class Relay:
    """The handler of one /v1 operation: parse -> authorise -> dispatch -> respond.

    What depends only on the operation is worked out once, and the app's parts (state
    holder, limiter, transport, routing) are read once when the app starts, after which
    aiohttp lets them change no more."""

    __slots__ = ("forwarded_headers", "holder", "limiter", "op", "read_body", "routing", "streams",
                 "transport")
    holder: StateHolder
    limiter: Limiter
    transport: Transport
    routing: Routing

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.read_body = read_multipart if op in MULTIPART_OPERATIONS else read_json
        self.streams = op not in (Operation.EMBEDDINGS, Operation.COUNT_TOKENS)
        # Client headers that mean something to a native upstream, if any for this operation.
        self.forwarded_headers = _FORWARDED_HEADERS.get(op)

    def bind(self, app: web.Application) -> None:
        self.holder, self.limiter = app[STATE], app[LIMITER]
        self.transport, self.routing = app[TRANSPORT], app[ROUTING]

    async def handle(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        op, limiter = self.op, self.limiter
        state = self.holder.current                     # one snapshot for the whole request
        key = authenticate_request(request, state, limiter, exchange)
        server = state.config.server
        body = await self.read_body(request, server.max_body_mb, server.body_timeout_s)
        check_fields(op, body)
        model: str = body["model"]
        route, targets = routed(state, key, model, exchange)
        stream = self.streams and bool(body.get("stream"))
        include_usage = False
        if stream:
            options = body.get("stream_options")
            # A Messages stream always includes usage: message_delta carries it.
            include_usage = op is Operation.MESSAGES or (isinstance(options, dict)
                                                 and options.get("include_usage") is True)
        exchange.stream = stream
        forwarded = _NOTHING_FORWARDED if self.forwarded_headers is None else _forwarded(
            request, self.forwarded_headers)
        # `created`: the request's arrival, already read from the clock.
        ctx = CallContext(model, exchange.request_id, int(exchange.started_wall), stream,
                          include_usage, body, forwarded)
        # Most requests have nothing limiting them: they are admitted, and end, without
        # suspending (nothing to wait for); the rest await the limiter.
        admission = (metering.admit_at_once(limiter, state, key, body)
                     or await metering.admit(limiter, state, key, body, exchange))
        reply: Reply | StreamReply | RawReply | None = None
        try:
            if op is Operation.COUNT_TOKENS and not _any_serves(state, targets, op):
                return _estimated_count(body, exchange)
            call = Call(state, op, body, route, targets, ctx, limiter, admission.estimate)
            reply = await dispatch(call, self.transport, exchange, self.routing)
            if isinstance(reply, Reply):
                return json_answer(reply.body, exchange)
            if isinstance(reply, RawReply):
                return await write_raw(request, reply, exchange)
            return await write_stream(request, reply, exchange)
        finally:   # after the last byte, an error, or the client leaving (streams included)
            rest = metering.end(admission, exchange, route, reply.upstream_use if reply else None)
            if rest is not None:
                await rest


class AnthropicRelay(Relay):
    """The Anthropic Messages API (and its token counting, passed to an `anthropic`
    upstream): the same pipeline, Anthropic-shaped answers and errors."""

    __slots__ = ()

    async def handle(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        try:
            return await super().handle(request, exchange)
        except errors.GatewayError as exc:
            exchange.error_reason = exchange.error_reason or exc.type
            body = orjson.dumps(anthropic_error(exc.status, exc.body()))
            return web.Response(status=exc.status, body=body, content_type="application/json",
                                headers={**exc.headers(), **gateway_headers(exchange)})


def _any_serves(state: State, targets: tuple[Target, ...], op: Operation) -> bool:
    return any(op in state.providers[t.provider_id].spec.operations for t in targets)


def _estimated_count(body: dict[str, Any], exchange: Exchange) -> web.Response:
    """Token counting for an alias with no `anthropic` target: estimated here by the rule
    tpm limits use (characters / 4), marked as such. Clients ask it to manage their
    context window, where an estimate serves and a 400 only breaks them."""
    return json_answer(orjson.dumps({"input_tokens": estimate_prompt_tokens(body)}), exchange,
                           (("x-truckllm-estimated", "true"),))


# Client headers that mean something to a native upstream: Anthropic's beta features
# (Claude Code and other Anthropic SDK tools turn them on per request).
_FORWARDED_HEADERS = {Operation.MESSAGES: ("anthropic-beta",),
                      Operation.COUNT_TOKENS: ("anthropic-beta",)}
_NOTHING_FORWARDED: Mapping[str, str] = MappingProxyType({})


def _forwarded(request: web.Request, names: tuple[str, ...]) -> Mapping[str, str]:
    return {name: request.headers[name] for name in names if name in request.headers}


def authenticate_request(request: web.Request, state: State, limiter: Limiter,
                  exchange: Exchange) -> ClientKey | None:
    """The caller's key; from here on its responses carry its x-ratelimit-* headers."""
    key = authenticate(request, state)
    if key is not None:
        exchange.key_id = key.id
        sending = state.limits.sending_headers.get(key.id)    # most keys send none
        if sending is not None:
            exchange.ratelimit_reader = metering.ratelimit_headers_reader(limiter, sending)
    return key


def routed(state: State, key: ClientKey | None, model: str,
           exchange: Exchange) -> tuple[Route, tuple[Target, ...]]:
    """The route and targets serving `model` for `key` (its alias noted on the exchange),
    or the 404/403 `model_refused` says."""
    resolved = state.resolve(model)
    # Most keys have no allow-list.
    if resolved is None or (key is not None and key.allowed is not None
                            and not key.may_use(model)):
        raise model_refused(model, resolved)
    route, targets = resolved
    exchange.alias = route.alias
    return route, targets


def model_refused(model: str, resolved: object) -> errors.GatewayError:
    """404 for a model no route serves; 403 for one the key's allow-list leaves out."""
    if resolved is None:
        return errors.NotFound(f"The model '{model}' does not exist.", param="model",
                               code="model_not_found")
    return errors.PermissionDenied(f"This API key may not use the model '{model}'.",
                                   param="model", code="model_not_allowed")


async def list_models(request: web.Request, exchange: Exchange) -> web.Response:
    state = request.app[STATE].current
    key = authenticate_request(request, state, request.app[LIMITER], exchange)
    usable = [route for route in state.all_routes if key is None or key.may_use(route.alias)]
    # A wildcard alias is no model a client can send as it is: it is listed apart, by the
    # text a model name starts and ends with, so that no client picks `openai/*` as a model.
    data = [_model_entry(state, route.alias, route) for route in usable if not is_wildcard(route.alias)]
    wildcards = [_wildcard_entry(route) for route in usable if is_wildcard(route.alias)]
    return _json({"object": "list", "data": data, "wildcards": wildcards})


def _wildcard_entry(route: Route) -> dict[str, Any]:
    prefix, _, suffix = route.alias.partition("*")
    return {"pattern": route.alias, "prefix": prefix, "suffix": suffix,
            "owned_by": route.targets[0].provider_id}


async def get_model(request: web.Request, exchange: Exchange) -> web.Response:
    state = request.app[STATE].current
    key = authenticate_request(request, state, request.app[LIMITER], exchange)
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


# Each /v1 operation's path, and whether it answers in Anthropic's shape.
_RELAYS: dict[str, tuple[Operation, type[Relay]]] = {
    "/v1/chat/completions": (Operation.CHAT, Relay),
    "/v1/completions": (Operation.COMPLETIONS, Relay),
    "/v1/embeddings": (Operation.EMBEDDINGS, Relay),
    "/v1/messages": (Operation.MESSAGES, AnthropicRelay),
    "/v1/messages/count_tokens": (Operation.COUNT_TOKENS, AnthropicRelay),
    "/v1/audio/transcriptions": (Operation.AUDIO_TRANSCRIPTIONS, Relay),
    "/v1/audio/translations": (Operation.AUDIO_TRANSLATIONS, Relay),
    "/v1/audio/speech": (Operation.AUDIO_SPEECH, Relay),
    "/v1/images/generations": (Operation.IMAGES, Relay),
}


def routes(app: web.Application) -> list[ExchangeRoute]:
    """The /v1 routes and /health; the relays read `app`'s parts when it starts."""
    relays = [relay(op) for op, relay in _RELAYS.values()]

    async def bind_relays(app: web.Application) -> None:
        for relay in relays:
            relay.bind(app)

    app.on_startup.append(bind_relays)
    return [
        *(ExchangeRoute("POST", path, relay.handle) for path, relay in zip(_RELAYS, relays, strict=True)),
        ExchangeRoute("GET", "/v1/models", list_models),
        ExchangeRoute("GET", "/v1/models/{model:.+}", get_model),
        *plain_routes([web.get("/health", health)]),
    ]
