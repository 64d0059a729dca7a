"""Azure OpenAI: OpenAI bodies on Azure's URLs and auth, answers normalised for OpenAI SDKs.

Pure translation, no I/O; must not import transport, dispatch or server modules.
URL shapes (checked against openai-python's lib/azure.py):
  classic: {base_url}/openai/deployments/{deployment}/{path}?api-version={api_version}
           (Target.model is the deployment name);
  v1:      base_url ending in /openai/v1 -> {base_url}/{path}, deployment in the body's `model`.
Auth is the `api-key` header; health checks list models (free). Azure's content-filter annotations are stripped, its
prompt-filter-only stream chunks skipped, and usage is always requested upstream.
Target.options: `api_version`.
"""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.errors import InvalidRequest, UpstreamFailed
from truckllm.providers.base import (
    CallContext,
    ParsedResponse,
    ProviderSpec,
    SSEEvent,
    Target,
    UpstreamErrorInfo,
    UpstreamRequest,
)
from truckllm.providers.shared.chat_shapes import encode_float_embeddings
from truckllm.providers.shared.media import PASS_THROUGH_OPERATIONS, media_request
from truckllm.providers.shared.model_ids import path_segment
from truckllm.providers.shared.tool_ids import with_short_tool_ids
from truckllm.providers.shared.upstream_errors import (
    context_overflow_code,
    decode_json,
    error_object,
    error_type_for_status,
    fallback_message,
    to_gateway_error,
)
from truckllm.usage import Usage

DEFAULT_API_VERSION = "2024-10-21"
PATHS = {
    "chat": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "audio_transcriptions": "audio/transcriptions",
    "audio_translations": "audio/translations",
    "audio_speech": "audio/speech",
    "images": "images/generations",
}


def upstream_url(operation: str, target: Target) -> str:
    path = PATHS.get(operation)
    if path is None:
        raise InvalidRequest(f"provider type 'azure' cannot serve {operation}", code="unsupported_operation")
    if target.base_url.endswith("/openai/v1"):
        return f"{target.base_url}/{path}"
    version = str(target.options.get("api_version") or DEFAULT_API_VERSION)
    deployment = path_segment(target.model)
    return f"{target.base_url}/openai/deployments/{deployment}/{path}?api-version={version}"


def auth_headers(target: Target, key: str) -> dict[str, str]:
    return {**target.headers, "api-key": key}


def build_request(operation: str, body: dict[str, Any], target: Target, key: str,
                  ctx: CallContext) -> UpstreamRequest:
    url = upstream_url(operation, target)
    if operation in PASS_THROUGH_OPERATIONS:
        return media_request(operation, body, url, auth_headers(target, key), target.model, ctx)
    payload = {**body, "model": target.model}
    stream = bool(payload.get("stream")) and operation in ("chat", "completions")
    if stream:
        # Always ask for usage so streams count; the chunk is dropped unless the client asked.
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    headers = {"content-type": "application/json", **auth_headers(target, key)}
    data = orjson.dumps(payload)
    if operation == "chat":
        data = with_short_tool_ids(payload, data)
    return UpstreamRequest("POST", url, headers, data, stream)


# ---- response -----------------------------------------------------------------------------


def parse_response(operation: str, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise UpstreamFailed("upstream answered with a body that is not JSON")
    data.pop("prompt_filter_results", None)
    for choice in data.get("choices") or []:
        if isinstance(choice, dict):
            choice.pop("content_filter_results", None)
    if "model" in data or operation in ("chat", "completions", "embeddings"):
        data["model"] = ctx.alias
    if operation == "embeddings" and ctx.client_body.get("encoding_format") == "base64":
        encode_float_embeddings(data)       # older api-versions ignore encoding_format
    return ParsedResponse(orjson.dumps(data), Usage.from_openai(data.get("usage")))


class AzureStreamTranslator:
    """Azure's OpenAI chunks, normalised: filter-only chunks skipped, annotations stripped,
    role sent once per choice, finish_reason alone in its chunk, usage chunk last and only on request."""

    def __init__(self, operation: str, ctx: CallContext) -> None:
        self._ctx = ctx
        self._chat = operation == "chat"
        self.usage: Usage | None = None
        self._roles_sent: set[int] = set()         # choice indices whose role went out
        self._finished = False
        self._done = False
        self._envelope: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> list[bytes]:
        if event.data.strip() == b"[DONE]":
            self._done = True
            return self._usage_chunk()
        data = decode_json(event.data)
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("error"), dict):
            raise to_gateway_error(_info(502, data["error"]))
        if isinstance(data.get("usage"), dict):
            self.usage = Usage.from_openai(data["usage"])
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        if not choices or data.get("object") not in ("chat.completion.chunk", "text_completion"):
            return []           # prompt-filter chunks, async-filter events, the usage chunk
        self._envelope = self._envelope or {"id": data.get("id"), "object": data.get("object"),
                                            "created": data.get("created") or self._ctx.created}
        out: list[bytes] = []
        for choice in choices:
            out += self._choice(choice)
        return out

    def close(self) -> list[bytes]:
        if not (self._done or self._finished):
            raise UpstreamFailed("upstream stream ended before it finished")
        return [] if self._done else self._usage_chunk()

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        choice.pop("content_filter_results", None)
        finish = choice.get("finish_reason")
        out: list[bytes] = []
        if self._chat:
            delta = dict(choice.get("delta") or {})
            index = choice.get("index", 0)
            if delta.get("role") and index in self._roles_sent:
                del delta["role"]                   # a repeated role breaks the SDK's accumulator
            if index not in self._roles_sent:      # once per choice (n > 1 streams several)
                delta["role"] = "assistant"
                self._roles_sent.add(index)
            if delta:
                out.append(self._chunk({**choice, "delta": delta, "finish_reason": None}))
            if finish:
                out.append(self._chunk({**choice, "delta": {}, "finish_reason": finish}))
        elif choice.get("text") or finish:
            out.append(self._chunk(choice))
        if finish:
            self._finished = True
        return out

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        body: dict[str, Any] = {**(self._envelope or {}), "model": self._ctx.alias, "choices": [choice]}
        if self._ctx.include_usage:
            body["usage"] = None
        return orjson.dumps(body)

    def _usage_chunk(self) -> list[bytes]:
        if not self._ctx.include_usage or self._envelope is None:
            return []
        body = {**self._envelope, "model": self._ctx.alias, "choices": [],
                "usage": (self.usage or Usage()).to_openai()}
        self._envelope = None       # exactly once
        return [orjson.dumps(body)]


def new_stream_translator(operation: str, target: Target, ctx: CallContext) -> AzureStreamTranslator:
    return AzureStreamTranslator(operation, ctx)


# ---- errors -------------------------------------------------------------------------------


def parse_error(status: int, body: bytes) -> UpstreamErrorInfo:
    error = error_object(body)
    if error is None:
        return UpstreamErrorInfo(status, error_type_for_status(status), fallback_message(status, body))
    return _info(status, error)


def _info(status: int, error: dict[str, Any]) -> UpstreamErrorInfo:
    message = str(error.get("message") or "upstream error")
    code = error.get("code")
    # Azure often puts the HTTP status in `code` ("429") and leaves `type` null.
    code = None if not isinstance(code, str) or code.isdigit() else code
    kind = str(error["type"]) if isinstance(error.get("type"), str) else error_type_for_status(status)
    param = error.get("param") if isinstance(error.get("param"), str) else None
    return UpstreamErrorInfo(status, kind, message, code=code or context_overflow_code(message), param=param)


def build_probe(target: Target, key: str) -> UpstreamRequest:
    """The free model listing (routing's health checks; answers 401 for a bad key):
    `GET {base_url}/openai/models?api-version=...`, or `{base_url}/models` on the v1 API."""
    if target.base_url.endswith("/openai/v1"):
        url = f"{target.base_url}/models"
    else:
        version = str(target.options.get("api_version") or DEFAULT_API_VERSION)
        url = f"{target.base_url}/openai/models?api-version={version}"
    return UpstreamRequest("GET", url, auth_headers(target, key), None, False)


SPEC = ProviderSpec(
    type="azure",
    default_base_url=None,
    operations=frozenset(PATHS),
    build_request=build_request,
    parse_response=parse_response,
    new_stream_translator=new_stream_translator,
    parse_error=parse_error,
    build_probe=build_probe,
)
