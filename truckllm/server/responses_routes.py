"""The OpenAI Responses API: POST /v1/responses through the same pipeline as chat
(routing, retries, fallback, limits, budgets, cost, metrics, logs), plus the response
store's endpoints GET/DELETE /v1/responses/{id} and GET /v1/responses/{id}/input_items.

A response kept in the store belongs to the client key that made it; another key's
id is answered as if it did not exist. Stored text is never logged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import structlog
from aiohttp import web

from truckllm import errors
from truckllm.limits import Limiter, metering
from truckllm.pipeline.dispatch import Call, RawReply, Reply, StreamReply, dispatch
from truckllm.pipeline.record import Exchange
from truckllm.pipeline.router import Routing
from truckllm.pipeline.transport import Transport
from truckllm.protocols.responses.answer import ENCRYPTED_REASONING, shown, shown_items
from truckllm.protocols.responses.native import speaks_natively
from truckllm.protocols.responses.request import check_input_items, input_items, refuse_background
from truckllm.providers.base import CallContext, Operation, Target
from truckllm.providers.registry import NATIVE_RESPONSES
from truckllm.runtime.response_store import (
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
    store_path,
)
from truckllm.runtime.state import ClientKey, State, StateHolder
from truckllm.server.edge import ExchangeRoute, json_answer
from truckllm.server.keys import (
    LIMITER,
    RESPONSE_STORE,
    RESPONSES_ENDPOINT_MISSING,
    ROUTING,
    STATE,
    STATE_LINK,
    TRANSPORT,
)
from truckllm.server.routes import authenticate_request, routed
from truckllm.server.streaming import write_stream
from truckllm.server.validation import check_fields, read_json

log = structlog.get_logger("truckllm.server.responses")

_DAY_S = 86_400.0


class _CreateResponse:
    """POST /v1/responses. The app's parts it uses are read once when the app starts (after
    which aiohttp lets them change no more) rather than looked up in the app on every
    request, and the route's handler is this object's bound `handle`, as a /v1 relay's is."""

    __slots__ = ("holder", "limiter", "missing", "routing", "stores", "transport")
    holder: StateHolder
    limiter: Limiter
    transport: Transport
    routing: Routing
    stores: list[ResponseStore]         # filled when the app starts: see response_store
    missing: set[str]                   # RESPONSES_ENDPOINT_MISSING

    def bind(self, app: web.Application) -> None:
        self.holder, self.limiter = app[STATE], app[LIMITER]
        self.transport, self.routing = app[TRANSPORT], app[ROUTING]
        self.stores, self.missing = app[RESPONSE_STORE], app[RESPONSES_ENDPOINT_MISSING]

    async def handle(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        state = self.holder.current                    # one snapshot for the whole request
        limiter = self.limiter
        key = authenticate_request(request, state, limiter, exchange)
        server = state.config.server
        body = await read_json(request, server.max_body_mb, server.body_timeout_s)
        check_fields(Operation.RESPONSES, body)
        model: str = body["model"]
        route, targets = routed(state, key, model, exchange)
        store = self.stores[0] if self.stores else None
        owner = "" if key is None else key.id
        keep = store is not None and body.get("store", True) is not False
        previous = body.get("previous_response_id")
        history, prefer = ([], None) if previous is None else await _history(store, previous, owner)
        raw_input = body.get("input")
        # What went in, for the store and a continued conversation; nothing else reads it.
        # Without either, a list of items is only checked, not made into items anew.
        items: list[dict[str, Any]] = []
        if keep or history:
            items = [*history, *input_items(raw_input)]
        elif isinstance(raw_input, list):
            check_input_items(raw_input)
        full = {**body, "input": items} if history else body
        if body.get("background") and not all(_native(state, target) for target in targets):
            # Refused here, before any upstream call, when a target would translate it.
            refuse_background(body)
        stream = bool(body.get("stream"))
        exchange.stream = stream
        # An answer translated through chat gets its id where it is made; a native one
        # carries the upstream's.
        final: list[dict[str, Any]] = []            # the finished response, for the store
        ctx = CallContext(model, exchange.request_id, int(exchange.started_wall), stream, stream,
                          full, _NO_HEADERS,
                          on_response=final.append if keep else None)   # the store reads it
        # As for the /v1 relays: most requests have nothing to await to be admitted or to end.
        admission = (metering.admit_at_once(limiter, state, key, full)
                     or await metering.admit(limiter, state, key, full, exchange))
        missing = self.missing
        reply: Reply | StreamReply | RawReply | None = None
        try:
            call = Call(state, Operation.RESPONSES, full, route,
                        _chat_where_missing(targets, missing) if missing else targets,
                        ctx, limiter, admission.estimate, prefer)
            try:
                reply = await dispatch(call, self.transport, exchange, self.routing)
            except errors.UpstreamStatus as exc:
                if not _endpoint_missing(state, exc, exchange, call.targets):
                    raise
                missing.add(exchange.provider_id or "")
                log.warning("responses_endpoint_missing", provider=exchange.provider_id,
                            action="translated through chat from now on")
                call = replace(call, targets=_chat_where_missing(targets, missing))
                reply = await dispatch(call, self.transport, exchange, self.routing)
            if isinstance(reply, Reply):
                if keep and store is not None:
                    # A translated answer handed its whole response (reasoning state and all)
                    # to on_response; a native one is kept as the upstream gave it.
                    whole = final[-1] if final else orjson.loads(reply.body)
                    await store.put(_stored(state, whole, items, owner, exchange,
                                            _served_natively(state, exchange, call.targets)))
                return json_answer(reply.body, exchange)
            if isinstance(reply, RawReply):        # not an answer any provider gives here
                raise errors.UpstreamFailed("upstream answered /responses with an unexpected body")
            response = await write_stream(request, reply, exchange)
            if keep and store is not None and final:
                await store.put(_stored(state, final[-1], items, owner, exchange,
                                        _served_natively(state, exchange, call.targets)))
            return response
        finally:   # after the last byte, an error, or the client leaving (streams included)
            rest = metering.end(admission, exchange, route, reply.upstream_use if reply else None)
            if rest is not None:
                await rest


# A native Responses request forwards no client headers.
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _native(state: State, target: Target) -> bool:
    """Whether a target gets /v1/responses natively (its provider type has the endpoint
    and the target does not say `responses: chat`)."""
    return state.providers[target.provider_id].spec.type in NATIVE_RESPONSES and speaks_natively(target)


def _chat_where_missing(targets: tuple[Target, ...], missing: set[str]) -> tuple[Target, ...]:
    """The targets, with those of providers whose upstream has no /responses endpoint
    set to `responses: chat`."""
    if not missing or not any(t.provider_id in missing for t in targets):
        return targets
    return tuple(replace(t, settings=t.settings.model_copy(update={"responses": "chat"}))
                 if t.provider_id in missing and t.settings is not None else t for t in targets)


def _endpoint_missing(state: State, exc: errors.UpstreamStatus, exchange: Exchange,
                      targets: tuple[Target, ...]) -> bool:
    """A 404 from a native target that is not about the model: the upstream (an
    OpenAI-compatible server, say) has no Responses API."""
    return (exc.status == 404 and exc.code != "model_not_found"
            and _served_natively(state, exchange, targets))


def _served_natively(state: State, exchange: Exchange, targets: tuple[Target, ...]) -> bool:
    target = next((t for t in targets if t.provider_id == exchange.provider_id
                   and t.model == exchange.upstream_model), None)
    return target is not None and _native(state, target)


async def _history(store: ResponseStore | None, previous: Any,
                   owner: str) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """The items a `previous_response_id` continues from (its input and its output), and,
    for a response made natively upstream, the provider and key to try first."""
    stored = await store.get(previous, owner) if store is not None else None
    if stored is None:
        raise errors.InvalidRequest(f"Previous response with id '{previous}' not found.",
                                    param="previous_response_id", code="previous_response_not_found")
    # A reasoning item without its encrypted content stands for state kept upstream (in an
    # account the follow-up may not reach): sent back, it would only be refused.
    items = [item for item in (*stored.input_items, *stored.response.get("output", []))
             if item.get("type") != "reasoning" or item.get("encrypted_content")]
    return items, (stored.provider_id, stored.key_id) if stored.native else None


def _stored(state: State, response: dict[str, Any], items: list[dict[str, Any]], owner: str,
            exchange: Exchange, native: bool) -> StoredResponse:
    now = time.time()
    ttl = state.config.responses.ttl_days * _DAY_S
    return StoredResponse(response["id"], owner, now, now + ttl, response, items,
                          exchange.provider_id or "", exchange.upstream_key_id or "", native)


def _owner(key: ClientKey | None) -> str:
    return "" if key is None else key.id


def _store(app: web.Application) -> ResponseStore | None:
    stores = app[RESPONSE_STORE]
    return stores[0] if stores else None


async def _own_stored(request: web.Request, exchange: Exchange) -> tuple[ResponseStore, StoredResponse]:
    app = request.app
    state = app[STATE].current
    key = authenticate_request(request, state, app[LIMITER], exchange)
    response_id = request.match_info["response_id"]
    store = _store(app)
    stored = await store.get(response_id, _owner(key)) if store is not None else None
    if store is None or stored is None:
        raise errors.NotFound(f"No response found with id '{response_id}'.", param="response_id",
                              code="not_found")
    return store, stored


async def get_response(request: web.Request, exchange: Exchange) -> web.Response:
    _, stored = await _own_stored(request, exchange)
    return json_answer(orjson.dumps(shown(stored.response, _asks_sealed(request))), exchange)


async def delete_response(request: web.Request, exchange: Exchange) -> web.Response:
    store, stored = await _own_stored(request, exchange)
    await store.delete(stored.id, stored.owner)
    return json_answer(orjson.dumps({"id": stored.id, "object": "response.deleted",
                                         "deleted": True}), exchange)


async def list_input_items(request: web.Request, exchange: Exchange) -> web.Response:
    _, stored = await _own_stored(request, exchange)
    items = [item if "id" in item else {"id": f"item_{stored.id.removeprefix('resp_')}{i:03d}", **item}
             for i, item in enumerate(shown_items(stored.input_items, _asks_sealed(request)))]
    if request.query.get("order", "desc") != "asc":
        items.reverse()
    limit = _limit(request.query.get("limit"))
    after = request.query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return json_answer(orjson.dumps({
        "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}), exchange)


def _asks_sealed(request: web.Request) -> bool:
    """Whether a GET asks for reasoning items' `encrypted_content` (`include`, or
    `include[]` as the official SDKs write an array in a query)."""
    return ENCRYPTED_REASONING in (*request.query.getall("include", ()),
                                   *request.query.getall("include[]", ()))


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise errors.InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
    return int(raw)


def routes(app: web.Application) -> list[ExchangeRoute]:
    """The Responses API's routes; POST reads `app`'s parts when it starts."""
    create = _CreateResponse()

    async def bind_parts(app: web.Application) -> None:
        create.bind(app)

    app.on_startup.append(bind_parts)
    return [
        ExchangeRoute("POST", "/v1/responses", create.handle),
        ExchangeRoute("GET", "/v1/responses/{response_id}", get_response),
        ExchangeRoute("DELETE", "/v1/responses/{response_id}", delete_response),
        ExchangeRoute("GET", "/v1/responses/{response_id}/input_items", list_input_items),
    ]


async def response_store(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the store `responses.store` names, opened before serving and closed
    after the last request."""
    loaded = app[STATE].current.loaded
    setting = loaded.config.responses.store
    from_file = not loaded.source.startswith("<") and Path(loaded.source).is_file()
    store: ResponseStore | None
    if setting == "off":
        store = None
    elif loaded.config.server.state_url is not None:    # shared by every instance
        from truckllm.runtime.redis_responses import RedisResponseStore
        store = RedisResponseStore(app[STATE_LINK])
    elif setting == "memory" or not from_file:
        store = MemoryResponseStore()
    else:
        sqlite = SqliteResponseStore(store_path(loaded.source, setting))
        await sqlite.open()
        store = sqlite
    app[RESPONSE_STORE].extend([store] if store is not None else [])
    yield
    app[RESPONSE_STORE].clear()
    if store is not None:
        await store.close()
