"""OpenAI and OpenAI-compatible servers: near-identity translation. No I/O.

Requests go out as the client sent them, with the upstream model name and, for streams,
`stream_options.include_usage` forced on so usage can always be counted. Responses and
stream chunks are read whole (a body or chunk that is not a valid answer is an upstream
failure) and handed back as the upstream's bytes with only `model` rewritten to the
client's alias, so that what the upstream sent reaches the client unchanged otherwise. An
`{"error": ...}` event in a stream is raised as a GatewayError, like every translator's.
Embeddings the client asked for in base64 are encoded here when the upstream answered
floats anyway.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec
import orjson
from multidict import CIMultiDict

from truckllm.errors import GatewayError, UpstreamFailed
from truckllm.providers.base import (
    CallContext,
    Operation,
    OperationSpec,
    ParsedResponse,
    ProviderSpec,
    SSEEvent,
    Target,
    UpstreamErrorInfo,
    UpstreamKey,
    UpstreamRequest,
)
from truckllm.providers.shared import media
from truckllm.providers.shared.chat_shapes import encode_float_embeddings
from truckllm.providers.shared.reasoning import without_reasoning_state
from truckllm.providers.shared.tool_ids import with_short_tool_ids
from truckllm.providers.shared.upstream_errors import WRONG_SHAPE, to_gateway_error, wrong_shape
from truckllm.usage import Usage

PATHS: Mapping[Operation, str] = {
    Operation.CHAT: "/chat/completions", Operation.COMPLETIONS: "/completions",
    Operation.EMBEDDINGS: "/embeddings", **{op: "/" + path for op, path in media.PATHS.items()}}

# A JSON key "model" with its string value. Inside a JSON string every quote is escaped,
# so this only ever matches a real key; the first match is the top-level one in every
# OpenAI response shape (it precedes `choices` and `data`).
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_BACKSLASH = ord("\\")


def build_request(op: Operation, body: dict[str, Any], target: Target, key: UpstreamKey,
                  ctx: CallContext) -> UpstreamRequest:
    payload = dict(without_reasoning_state(body) if ctx.carry_reasoning else body)
    payload["model"] = target.model
    if ctx.stream and op is not Operation.EMBEDDINGS:
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
    headers = key.headers or key_headers(target.headers, key.value)
    data = orjson.dumps(payload)
    if op is Operation.CHAT:
        data = with_short_tool_ids(payload, data)
    return UpstreamRequest("POST", target.base_url + PATHS[op], headers, data, ctx.stream)


def build_media_request(op: Operation, body: dict[str, Any], target: Target, key: UpstreamKey,
                        ctx: CallContext) -> UpstreamRequest:
    """Audio and images: passed through as sent, only `model` replaced."""
    auth = {"Authorization": f"Bearer {key.value}"} if key.value else {}
    return media.media_request(op, body, target.base_url + PATHS[op], {**target.headers, **auth},
                               target.model, ctx)


def key_headers(extra: Mapping[str, str], key: str) -> Mapping[str, str]:
    """The headers of a JSON request with `key`, compiled once per key into the snapshot
    (UpstreamKey.headers). As aiohttp's CIMultiDict, which the transport copies as it is
    rather than case-folding each name again."""
    headers = CIMultiDict({"Content-Type": "application/json", **extra})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def responses_endpoint(target: Target, key: UpstreamKey) -> tuple[str, Mapping[str, str]]:
    """Where the Responses API is spoken natively (truckllm.protocols.responses.native)."""
    return target.base_url + "/responses", key.headers or key_headers(target.headers, key.value)


def build_probe(target: Target, key: str) -> UpstreamRequest:
    """`GET /models`: free, and answers 401 for a bad key."""
    headers = dict(target.headers)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return UpstreamRequest("GET", target.base_url + "/models", headers, None, False)


def rewrite_model(payload: bytes, alias_json: bytes) -> bytes:
    """Replace the first `"model": "..."` with the alias; `alias_json` is its JSON string."""
    # Compact JSON (what OpenAI and most servers send) needs no regex: the value ends at
    # the first quote after it unless that quote is escaped, which only a value ending in
    # a backslash can hide; such a value, and spaced JSON, go the regex's way.
    head, key, rest = payload.partition(b'"model":"')
    if key:
        value, quote, tail = rest.partition(b'"')
        if quote and (not value or value[-1] != _BACKSLASH):
            return b"".join((head, b'"model":', alias_json, tail))
    replacement = b'"model":' + alias_json
    return _MODEL_FIELD.sub(lambda _: replacement, payload, count=1)


@functools.lru_cache(maxsize=1024)
def json_string(text: str) -> bytes:
    """`text` as a JSON string: an alias, encoded for every answer and stream that names
    it (bounded: wildcard aliases let clients send any model name)."""
    return orjson.dumps(text)


def parse_response(op: Operation, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
    """The answer as it came with only `model` rewritten, once it has been read whole and
    found to be an answer of the operation's shape: anything else is an upstream failure."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamFailed(f"provider {target.provider_id!r} returned a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise UpstreamFailed(f"provider {target.provider_id!r} returned an unexpected JSON shape")
    items = answer.get("data" if op is Operation.EMBEDDINGS else "choices")
    if not isinstance(items, list):
        raise _unexpected_shape(target)
    for item in items:
        if not isinstance(item, dict):
            raise _unexpected_shape(target)
    usage = Usage.from_openai(answer.get("usage"))
    if (op is Operation.EMBEDDINGS and ctx.client_body.get("encoding_format") == "base64"
            and encode_float_embeddings(answer)):
        return ParsedResponse(orjson.dumps({**answer, "model": ctx.alias}), usage)
    return ParsedResponse(rewrite_model(raw, json_string(ctx.alias)), usage)


def _unexpected_shape(target: Target) -> UpstreamFailed:
    return UpstreamFailed(f"provider {target.provider_id!r} returned an answer of an unexpected shape")


class _StreamChoice(msgspec.Struct):
    finish_reason: Any = None


class _StreamChunk(msgspec.Struct):
    """What the pass-through reads of a chat completion chunk. Decoding into these few
    fields still reads the whole chunk (anything that is not one JSON object fails), but
    builds no Python objects for what goes to the client unread: the content, the deltas,
    which every chunk of every stream would otherwise pay for."""
    choices: list[_StreamChoice] | None = None
    usage: Any = None
    model: Any = None
    error: Any = None


_decode_stream_chunk = msgspec.json.Decoder(_StreamChunk).decode


class PassThroughStream:
    """Forwards OpenAI chunks as they are, rewriting `model` and noting usage.

    Every chunk is read whole: one that is not a JSON object, or whose `choices` is not a
    list of objects, is an upstream failure (retried before the first byte, an error event after it),
    and so is an upstream error event and a stream that ends with neither `[DONE]` nor a
    finish_reason. The usage-only chunk (empty `choices`) that TruckLLM asked for on the
    client's behalf is dropped unless the client asked for it too; chunks with empty
    `choices` and no usage are always dropped.
    """

    __slots__ = ("_alias_field", "_alias_json", "_ended", "_include_usage", "_model_field", "usage")

    def __init__(self, ctx: CallContext) -> None:
        self._alias_json = json_string(ctx.alias)
        self._alias_field = b'"model":' + self._alias_json
        # The upstream's `"model":"..."` field as its chunks spell it (learnt from the
        # first): every chunk of a stream names the same model, so each is rewritten by
        # one search for these bytes rather than by parsing the field's value again.
        self._model_field: bytes | None = None
        self._include_usage = ctx.include_usage
        self.usage: Usage | None = None
        self._ended = False         # `[DONE]` or a finish_reason seen: the answer is whole

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        data = event.data
        chunk = self._read(data)
        if chunk is None:
            return []
        if self._model_field is not None:
            head, found, tail = data.partition(self._model_field)
            if found:
                return [SSEEvent(None, b"".join((head, self._alias_field, tail)))]
        return [SSEEvent(None, self._with_alias(data, chunk))]

    def feed_decoded(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks `feed` would forward, decoded and with the upstream's model: for a
        translator of another API built on this one's chunks (protocols.through_chat),
        which names the model itself and so needs neither the rewrite nor a second parse."""
        if self._read(event.data) is None:
            return []
        return [orjson.loads(event.data)]

    def _read(self, data: bytes) -> _StreamChunk | None:
        """One event's chunk, read and checked, its usage and finish noted; None when
        nothing of it goes to the client."""
        try:
            chunk = _decode_stream_chunk(data)
        except msgspec.DecodeError as exc:
            # `[DONE]` is the one event that is not a chunk, and it comes once per stream.
            if data.startswith(b"[DONE]"):
                self._ended = True
                return None
            if isinstance(exc, msgspec.ValidationError):
                raise wrong_shape("a stream event") from None
            raise UpstreamFailed("upstream sent a stream event that is not JSON") from None
        if not data.isascii():
            # JSON is UTF-8, and the decoder does not check the text it passes over.
            try:
                data.decode()
            except UnicodeDecodeError:
                raise UpstreamFailed("upstream sent a stream event that is not JSON") from None
        choices = chunk.choices
        if choices is None:
            error = chunk.error
            if error is not None and isinstance(error, dict | str):
                # OpenAI and compatible servers send `{"error": {...}}` when a stream fails.
                raise to_gateway_error(parse_error(502, data))
        usage = chunk.usage
        if usage is not None:
            self.usage = Usage.from_openai(usage) or self.usage
        if not choices:
            # Nothing for the client unless it is the usage it asked for. Without usage:
            # Azure's prompt-filter chunk (sent first, with an empty id) on its v1 API,
            # keep-alives; clients that read choices[0] crash on those.
            if choices is not None and (usage is None or not self._include_usage):
                return None
        elif not self._ended:
            for choice in choices:
                if choice.finish_reason:
                    self._ended = True
        return chunk

    def feed_read(self, read: bytes, payloads: list[bytes]) -> bytes | None:
        """A read of whole events at once (base.ReadFeeder): when its events are chunks that
        go to the client with only `model` rewritten, then at most events dropped (`[DONE]`,
        a usage chunk not asked for), the client gets the read's own bytes, the dropped
        tail cut off and the alias in each chunk. Any other read (an error event, a chunk
        that is not one, a model spelled otherwise) is left to `feed`, which raises or
        rewrites as it must; nothing noted here on the way (usage, the end) is changed by
        reading the same events again."""
        sent = 0            # the read's first events, which go to the client
        dropped = 0         # the bytes of the events after them, which do not
        for data in payloads:
            try:
                chunk = self._read(data)
            except (GatewayError, *WRONG_SHAPE):
                return None     # `feed` raises it, after the events before it
            if chunk is None:
                dropped += len(data) + 8            # `data: ` and the blank line
                continue
            if dropped:
                return None
            sent += 1
            if self._model_field is None:
                model = chunk.model
                if isinstance(model, str):
                    self._model_field = b'"model":' + orjson.dumps(model)
        if not sent:
            return b""
        field = self._model_field
        if field is None:
            return None
        alias = self._alias_field
        # The alias replaces the first `"model":"..."` of each chunk, as `feed` does.
        if sent == 1:
            out = read[:len(read) - dropped] if dropped else read
            renamed = out.replace(field, alias, 1)
            if renamed != out:
                return renamed
            # Not found, or the alias is the upstream's own name.
            return out if field == alias and out.find(field) >= 0 else None
        chunks = payloads[:sent] if dropped else payloads
        if field == alias:
            for data in chunks:
                if data.find(field) < 0:
                    return None
            return read[:len(read) - dropped] if dropped else read
        renamed_chunks = []
        for data in chunks:
            renamed = data.replace(field, alias, 1)
            if renamed == data:
                return None
            renamed_chunks.append(renamed)
        return b"data: " + b"\n\ndata: ".join(renamed_chunks) + b"\n\n"

    def _with_alias(self, data: bytes, chunk: _StreamChunk) -> bytes:
        """The chunk's bytes with the alias for a model name not seen before in the stream."""
        model = chunk.model
        if isinstance(model, str):
            self._model_field = b'"model":' + orjson.dumps(model)
        return rewrite_model(data, self._alias_json)

    def close(self) -> list[SSEEvent]:
        if not self._ended:
            raise UpstreamFailed("upstream stream ended before it finished (no finish_reason, no [DONE])")
        return []


def new_stream_translator(target: Target, ctx: CallContext) -> PassThroughStream:
    return PassThroughStream(ctx)


def parse_error(status: int, raw: bytes) -> UpstreamErrorInfo:
    """Read an OpenAI-style error envelope; tolerate servers that send something else."""
    default_type = "invalid_request_error" if 400 <= status < 500 else "upstream_error"
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        return UpstreamErrorInfo(
            status=status,
            type=_text(error.get("type")) or default_type,
            message=_text(message) or f"upstream returned HTTP {status}",
            code=_text(error.get("code")),
            param=_text(error.get("param")),
        )
    if isinstance(error, str):                   # some compatible servers: {"error": "..."}
        return UpstreamErrorInfo(status, default_type, error)
    return UpstreamErrorInfo(status, default_type, f"upstream returned HTTP {status}")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def operation(op: Operation) -> OperationSpec:
    """How an OpenAI-compatible server serves `op`: chat, completions and embeddings are
    translated (barely), audio and images relayed raw."""
    if op in media.PASS_THROUGH_OPERATIONS:
        return OperationSpec(functools.partial(build_media_request, op), None, raw=True)
    streams = op is not Operation.EMBEDDINGS
    return OperationSpec(functools.partial(build_request, op), functools.partial(parse_response, op),
                         new_stream_translator if streams else None)


OPERATIONS: Mapping[Operation, OperationSpec] = MappingProxyType({op: operation(op) for op in PATHS})

SPEC = ProviderSpec(
    type="openai",
    default_base_url="https://api.openai.com/v1",
    operations=OPERATIONS,
    parse_error=parse_error,
    build_probe=build_probe,
    key_headers=key_headers,
)
