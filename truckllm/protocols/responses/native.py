"""The Responses API passed through to an upstream that speaks it (OpenAI, Azure): the
body goes up with only `model` rewritten (and a `previous_response_id` already resolved
into `input` by the server left out), answers and events come back with the alias as
`model`. Events that are not part of the Responses API (`codex.rate_limits`, say) are
not forwarded; an `error` event fails the attempt (retried before the first byte), and
after the start ends the stream with `response.failed`, as a translated stream does.
Reasoning items whose `encrypted_content` TruckLLM sealed (another provider's reasoning,
from a translated turn before a fallback) are left out: the upstream could not open them.

Pure, no I/O. Imports only providers.base, providers.openai (the model rewrite of its
answers), errors, usage, protocols.responses.answer and protocols.responses.sealed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from truckllm.config.schema import AzureProvider, OpenAIProvider
from truckllm.errors import GatewayError, UpstreamFailed
from truckllm.protocols.responses.answer import failed
from truckllm.protocols.responses.sealed import PREFIX
from truckllm.providers.base import (
    CallContext,
    ParsedResponse,
    SSEEvent,
    Target,
    UpstreamErrorInfo,
    UpstreamKey,
    UpstreamRequest,
)
from truckllm.providers.openai import json_string, rewrite_model
from truckllm.providers.shared.upstream_errors import decode_json, to_gateway_error
from truckllm.usage import Usage, token_count

# (target, upstream key) -> the upstream's /responses URL and the request's headers
NativeEndpoint = Callable[[Target, UpstreamKey], tuple[str, Mapping[str, str]]]

_TYPE = re.compile(rb'^\s*\{\s*"type"\s*:\s*"([a-z_.]+)"')
# Events that carry the response object, whose `model` (and usage) must be read.
_WITH_RESPONSE = frozenset({"response.created", "response.in_progress", "response.queued",
                            "response.completed", "response.incomplete", "response.failed"})
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events read whole besides those: the finished items, which a `response.failed` reports.
_READ = _WITH_RESPONSE | {"error", "response.output_item.done"}
_READ_NAMES = frozenset(kind.encode() for kind in _READ)
# The provider settings that have `responses: native | chat`.
_SAYS_HOW = (OpenAIProvider, AzureProvider)


def speaks_natively(target: Target) -> bool:
    """Whether a target of a provider with a Responses endpoint gets the request natively
    (`responses: native`, the default) or through chat (`responses: chat`)."""
    settings = target.settings
    # A tuple, not `OpenAIProvider | AzureProvider`: that union would be built anew on
    # every call, and this is asked on every native request's build and parse.
    if isinstance(settings, _SAYS_HOW):
        return settings.responses == "native"
    return True


def build_native_request(body: dict[str, Any], target: Target, key: UpstreamKey,
                         ctx: CallContext, endpoint: NativeEndpoint) -> UpstreamRequest:
    url, headers = endpoint(target, key)
    payload = {**body, "model": target.model}
    # The server has put the stored conversation into `input`: the upstream (maybe
    # another account) is asked without a reference to it.
    payload.pop("previous_response_id", None)
    items = payload.get("input")
    if isinstance(items, list) and any(_sealed_here(item) for item in items):
        payload["input"] = [item for item in items if not _sealed_here(item)]
    return UpstreamRequest("POST", url, headers, orjson.dumps(payload), ctx.stream)


def _sealed_here(item: Any) -> bool:
    """A reasoning item of a translated answer (its content sealed by TruckLLM)."""
    return (isinstance(item, dict) and item.get("type") == "reasoning"
            and str(item.get("encrypted_content") or "").startswith(PREFIX))


def parse_native_response(raw: bytes, ctx: CallContext) -> ParsedResponse:
    response = decode_json(raw)
    if not isinstance(response, dict) or response.get("object") != "response":
        raise UpstreamFailed("upstream answered /responses with a body that is not a response")
    usage = usage_of(response.get("usage"))
    # Like a chat answer, the upstream's bytes with only `model` rewritten, when its one
    # `"model"` is certainly the top-level field (nothing else is spelt so, not even a
    # value) and nothing else changes; otherwise the response is written anew.
    if (response.get("model").__class__ is str and raw.count(b'"model"') == 1
            and ctx.client_body.get("previous_response_id") is None):
        return ParsedResponse(rewrite_model(raw, json_string(ctx.alias)), usage)
    _as_client_sees(response, ctx)
    return ParsedResponse(orjson.dumps(response), usage)


def usage_of(usage: Any) -> Usage | None:
    """Responses usage as TruckLLM counts it (prompt includes cached, as in chat)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens")),
                 token_count(cached))


def _as_client_sees(response: dict[str, Any], ctx: CallContext) -> None:
    response["model"] = ctx.alias
    previous = ctx.client_body.get("previous_response_id")
    if previous is not None:
        response["previous_response_id"] = previous


class NativeResponsesStream:
    """Upstream Responses events forwarded; those carrying the response object get the
    alias as `model`, and the final one gives the usage and goes to the context's
    `on_response`. Keeps what a `response.failed` of its own reports: the response as
    created, the items finished so far and the last event forwarded (its number).

    An event reaches the client as the upstream's bytes, with the alias in place of the
    response's model when that field is certainly the only change (see `_renamed`);
    otherwise the event read is written anew. A read of whole events named as their
    `type` says (what the upstream sends) goes to the client as the read's own bytes
    (`feed_named_read`); any other read is taken event by event (`feed`)."""

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._alias_field = b'"model":' + json_string(ctx.alias)
        # A follow-up's response objects name the previous response, which the upstream's
        # do not: those are written anew.
        self._renames = ctx.client_body.get("previous_response_id") is None
        self.usage: Usage | None = None
        self._ended = False
        self._frame: dict[str, Any] | None = None
        self._output: list[dict[str, Any]] = []
        self._last = b""

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        data = event.data
        match = _TYPE.match(data)
        kind = match.group(1).decode() if match else event.event
        if kind is None or not (kind.startswith("response.") or kind == "error"):
            return []                   # not a Responses event: never forwarded
        if kind not in _READ:
            self._last = data
            return [SSEEvent(kind, data)]
        parsed = decode_json(data)
        if not isinstance(parsed, dict):
            return []
        if kind == "error":
            raise to_gateway_error(_error_info(parsed))
        if kind == "response.output_item.done":
            item = parsed.get("item")
            if isinstance(item, dict):
                self._output.append(item)
            self._last = data
            return [SSEEvent(kind, data)]
        response = parsed.get("response")
        out = None
        if isinstance(response, dict):
            out = self._renamed(data, response)
            self._took(kind, response)
        self._last = orjson.dumps(parsed) if out is None else out
        return [SSEEvent(kind, self._last)]

    def feed_named_read(self, read: bytes, events: list[tuple[bytes, bytes]]) -> bytes | None:
        """A read of whole named events at once (base.NamedReadFeeder): when each is a
        Responses event named as its `type` says, none an `error` or one `feed` would
        drop or write anew, the client gets the read's own bytes, the alias in the
        response objects. Any other read is left to `feed`: nothing is noted here until
        the whole read is known to be taken."""
        renamed: dict[int, bytes] = {}          # event index -> its bytes with the alias
        responses: list[tuple[str, dict[str, Any]]] = []
        items: list[dict[str, Any]] = []
        for index, (name, data) in enumerate(events):
            # A Responses event named as its `type` (the name `feed` reads), spelt exactly
            # `{"type":"response.<...>"`; an `error` or a foreign event is left to `feed`,
            # which raises or drops it.
            size = len(name)
            if (data[:18] != b'{"type":"response.' or data.find(b'"', 18) != 9 + size
                    or data[9:9 + size] != name):
                return None
            if name in _READ_NAMES:
                parsed = decode_json(data)
                if parsed.__class__ is not dict:
                    return None
                if name == b"response.output_item.done":
                    item = parsed.get("item")
                    if isinstance(item, dict):
                        items.append(item)
                    continue
                response = parsed.get("response")
                if response.__class__ is not dict:
                    return None
                out = self._renamed(data, response)
                if out is None:
                    return None
                renamed[index] = out
                responses.append((name.decode(), response))
        for kind, response in responses:
            self._took(kind, response)
        self._output += items
        last = len(events) - 1
        self._last = renamed.get(last, events[last][1])
        if not renamed:
            return read
        return b"".join([b"event: %b\ndata: %b\n\n" % (name, renamed.get(index, data))
                         for index, (name, data) in enumerate(events)])

    def _renamed(self, data: bytes, response: dict[str, Any]) -> bytes | None:
        """The event's bytes with the alias as the response's `model`, when that field is
        certainly the only one spelt so (no other `"model"` in the event, not even in a
        value) and nothing else changes; None when the event is to be written anew."""
        model = response.get("model")
        if not self._renames or model.__class__ is not str or data.count(b'"model"') != 1:
            return None
        head, found, tail = data.partition(b'"model":' + json_string(model))
        return b"".join((head, self._alias_field, tail)) if found else None

    def _took(self, kind: str, response: dict[str, Any]) -> None:
        """An event carrying the response object, forwarded: the client's response (the
        alias as its model), kept as created, and at the end its usage and the store's."""
        _as_client_sees(response, self._ctx)
        if kind == "response.created":
            self._frame = response
        if kind in _TERMINAL:
            self._ended = True
            self.usage = usage_of(response.get("usage")) or self.usage
            if self._ctx.on_response is not None:
                self._ctx.on_response(response)

    def close(self) -> list[SSEEvent]:
        if not self._ended:
            raise UpstreamFailed("upstream stream ended before response.completed")
        return []

    def fail(self, error: GatewayError) -> list[SSEEvent]:
        """`response.failed` after the last event forwarded, with the items finished so far;
        nothing when the upstream never created the response."""
        if self._frame is None:
            return []
        last = decode_json(self._last) if self._last else None
        number = last.get("sequence_number") if isinstance(last, dict) else None
        sequence = number + 1 if isinstance(number, int) else 0
        response = failed(self._frame, self._output, error.body()["error"])
        if self._ctx.on_response is not None:
            self._ctx.on_response(response)
        return [SSEEvent("response.failed", orjson.dumps(
            {"type": "response.failed", "sequence_number": sequence, "response": response}))]


def _error_info(event: dict[str, Any]) -> UpstreamErrorInfo:
    """An `error` event (`{"type": "error", "code", "message"}`, or the error nested)."""
    nested = event.get("error")
    error: dict[str, Any] = nested if isinstance(nested, dict) else event
    code = error.get("code")
    status = 429 if code == "rate_limit_exceeded" else 502
    return UpstreamErrorInfo(status, "rate_limit_error" if status == 429 else "upstream_error",
                             str(error.get("message") or "upstream error"),
                             code=code if isinstance(code, str) else None)
