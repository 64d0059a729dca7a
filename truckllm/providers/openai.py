"""OpenAI and OpenAI-compatible servers: near-identity translation. No I/O.

Requests go out as the client sent them, with the upstream model name and, for streams,
`stream_options.include_usage` forced on so usage can always be counted. Responses and
stream chunks are handed back as bytes with only `model` rewritten to the client's alias,
found by a byte pattern rather than decoding and re-encoding each chunk. An
`{"error": ...}` event in a stream is raised as a GatewayError, like every translator's.
Embeddings the client asked for in base64 are encoded here when the upstream answered
floats anyway.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import orjson
from multidict import CIMultiDict

from truckllm.errors import UpstreamFailed
from truckllm.providers.base import (
    CallContext,
    ParsedResponse,
    ProviderSpec,
    SSEEvent,
    Target,
    UpstreamErrorInfo,
    UpstreamRequest,
)
from truckllm.providers.shared import media
from truckllm.providers.shared.chat_shapes import encode_float_embeddings
from truckllm.providers.shared.tool_ids import with_short_tool_ids
from truckllm.providers.shared.upstream_errors import to_gateway_error
from truckllm.usage import Usage

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
         **{op: "/" + path for op, path in media.PATHS.items()}}

# A JSON key "model" with its string value. Inside a JSON string every quote is escaped,
# so this only ever matches a real key; the first match is the top-level one in every
# OpenAI response shape (it precedes `choices` and `data`).
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_BACKSLASH = ord("\\")
_JSON_SPACE = b" \t\n\r"           # JSON whitespace (a bare strip() would also take \x0b, \x0c)
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
# An `"error":` key (same reasoning: never inside a string); decoded only when present.
_ERROR_KEY = re.compile(rb'"error"\s*:')
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')
# Anything in a stream chunk that `PassThroughStream.feed` acts on: an error value it may
# raise (an object or a string), a finish_reason or usage that is set, empty choices. Most
# chunks have none of these, and one search tells so (several substring tests each
# scanned the whole chunk).
_NOTABLE = re.compile(rb'"(?:error|finish_reason|usage)"\s*:\s*["{]|"choices"\s*:\s*\[\s*\]')


def build_request(op: str, body: dict[str, Any], target: Target, key: str,
                  ctx: CallContext) -> UpstreamRequest:
    if op in media.PASS_THROUGH_OPERATIONS:     # audio and images: passed through as sent
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return media.media_request(op, body, target.base_url + PATHS[op], {**target.headers, **auth},
                                   target.model, ctx)
    payload = dict(body)
    payload["model"] = target.model
    if ctx.stream and op in ("chat", "completions"):
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
    # Most targets have no extra headers: theirs are the same few per upstream key.
    headers = _json_headers(target.headers, key) if target.headers else _key_headers(key)
    data = orjson.dumps(payload)
    if op == "chat":
        data = with_short_tool_ids(payload, data)
    return UpstreamRequest("POST", target.base_url + PATHS[op], headers, data, ctx.stream)


def _json_headers(extra: Mapping[str, str], key: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **extra}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


@functools.lru_cache(maxsize=256)
def _key_headers(key: str) -> Mapping[str, str]:
    """The headers of a request to a target without extra headers: built once per upstream
    key rather than per request, and shared (UpstreamRequest.headers is read-only). As
    aiohttp's CIMultiDict: the transport's copy for aiohttp is then a plain copy, without
    case-folding each name again (~1.5k instructions less)."""
    return CIMultiDict(_json_headers({}, key))


def responses_endpoint(target: Target, key: str) -> tuple[str, Mapping[str, str]]:
    """Where the Responses API is spoken natively (truckllm.protocols.responses.native)."""
    return target.base_url + "/responses", _json_headers(target.headers, key)


def build_probe(target: Target, key: str) -> UpstreamRequest:
    """`GET /models`: free, and answers 401 for a bad key."""
    headers = dict(target.headers)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return UpstreamRequest("GET", target.base_url + "/models", headers, None, False)


def rewrite_model(payload: bytes, alias_json: bytes) -> bytes:
    """Replace the first `"model": "..."` with the alias; `alias_json` is its JSON string."""
    # Fast path for compact JSON (what OpenAI and most servers send): partition, not a
    # regex or `find` (whose argument parsing costs more than the search), and one join.
    # The value ends at the first quote after it unless that quote is escaped, which only
    # a value ending in a backslash can hide; such a value goes the regex's way.
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


def parse_response(op: str, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
    if op == "embeddings" and ctx.client_body.get("encoding_format") == "base64":
        parsed = _json_object(raw, target)
        usage = Usage.from_openai(parsed.get("usage"))
        if encode_float_embeddings(parsed):
            return ParsedResponse(orjson.dumps({**parsed, "model": ctx.alias}), usage)
    else:
        usage = Usage.from_openai(_usage_value(raw, target))
    return ParsedResponse(rewrite_model(raw, json_string(ctx.alias)), usage)


def _usage_value(raw: bytes, target: Target) -> Any:
    """The top-level `usage` value of an answer, which must be a JSON object.

    The answer goes to the client as it came, so it is parsed only as far as needed: when
    it opens with `{`, from its last `"usage"` key to its end, if that reads as the rest of
    an object (`{"usage"` put before it); otherwise whole, which refuses any body that is
    not a JSON object. OpenAI puts usage last or before `service_tier` and
    `system_fingerprint`, so its answers read the short way. That way cannot read a nested
    `usage` key of a valid JSON object: the brackets closing its containers would follow
    its value, and the short parse fails.
    """
    head, key, tail = raw.rpartition(b'"usage"')
    # Inside a JSON string every quote is escaped: a `"usage"` after no backslash is a key.
    if key and head[-1:] != b"\\" and (head[:1] == b"{" or head.lstrip(_JSON_SPACE)[:1] == b"{"):
        try:
            return orjson.loads(b'{"usage"' + tail)["usage"]
        except orjson.JSONDecodeError:
            pass            # not the rest of an object: the full parse decides
    return _json_object(raw, target).get("usage")


def _json_object(raw: bytes, target: Target) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamFailed(f"provider {target.provider_id!r} returned a body that is not JSON") from None
    if not isinstance(parsed, dict):
        raise UpstreamFailed(f"provider {target.provider_id!r} returned an unexpected JSON shape")
    return parsed


class PassThroughStream:
    """Forwards OpenAI chunks as they are, rewriting `model` and noting usage.

    An upstream error event raises (the relay turns it into TruckLLM's error event), and
    so does a stream that ends with neither `[DONE]` nor a finish_reason.
    The usage-only chunk (empty `choices`) that TruckLLM asked for on the client's behalf
    is dropped unless the client asked for it too; chunks with empty `choices` and no
    usage are always dropped.
    """

    __slots__ = ("_alias_json", "_ended", "_include_usage", "usage")

    def __init__(self, ctx: CallContext) -> None:
        self._alias_json = json_string(ctx.alias)
        self._include_usage = ctx.include_usage
        self.usage: Usage | None = None
        self._ended = False         # `[DONE]` or a finish_reason seen: the answer is whole

    def feed(self, event: SSEEvent) -> list[bytes]:
        data = event.data
        if data.startswith(b"[DONE]"):
            self._ended = True
            return []
        if _NOTABLE.search(data) is None:     # the common chunk: content, nothing to note
            return [rewrite_model(data, self._alias_json)]
        if b'"error"' in data and _ERROR_KEY.search(data):
            self._raise_error_event(data)
        if not self._ended and b'"finish_reason"' in data and _FINISH_REASON.search(data):
            self._ended = True
        if b'"usage"' in data and _USAGE_OBJECT.search(data):
            self._note_usage(data)
            if not self._include_usage and _has_empty_choices(data):
                return []
        elif _has_empty_choices(data):
            # Nothing for the client and no usage: Azure's prompt-filter chunk (sent first,
            # with an empty id) on its v1 API, keep-alives. Clients that read choices[0]
            # crash on it, and the SDKs expect the role in the first chunk.
            return []
        return [rewrite_model(data, self._alias_json)]

    def close(self) -> list[bytes]:
        if not self._ended:
            raise UpstreamFailed("upstream stream ended before it finished (no finish_reason, no [DONE])")
        return []

    @staticmethod
    def _raise_error_event(data: bytes) -> None:
        """An `{"error": {...}}` event (OpenAI and compatible servers send one when a
        stream fails): raised, so that routing can retry it before the first byte and the
        relay ends the stream with a clean error event after it."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict | str) and "choices" not in chunk:
            raise to_gateway_error(parse_error(502, data))

    def _note_usage(self, data: bytes) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(chunk, dict):
            self.usage = Usage.from_openai(chunk.get("usage")) or self.usage


def _has_empty_choices(data: bytes) -> bool:
    # `"choices":[{` (compact JSON, what nearly every chunk has) means choices is not empty.
    return b'"choices":[{' not in data and _EMPTY_CHOICES.search(data) is not None


def new_stream_translator(op: str, target: Target, ctx: CallContext) -> PassThroughStream:
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


SPEC = ProviderSpec(
    type="openai",
    default_base_url="https://api.openai.com/v1",
    operations=frozenset(PATHS),
    build_request=build_request,
    parse_response=parse_response,
    new_stream_translator=new_stream_translator,
    parse_error=parse_error,
    build_probe=build_probe,
)
