"""Azure OpenAI: OpenAI bodies on Azure's URLs and auth, answers normalised for OpenAI SDKs.

Pure translation, no I/O; must not import transport, dispatch or server modules.
URL shapes (checked against openai-python's lib/azure.py):
  classic: {base_url}/openai/deployments/{deployment}/{path}?api-version={api_version}
           (Target.model is the deployment name);
  v1:      base_url ending in /openai/v1 -> {base_url}/{path}, deployment in the body's `model`.
Auth is the `api-key` header; health checks list models (free). Azure's content-filter annotations are stripped, its
prompt-filter-only stream chunks skipped, and usage is always requested upstream.
Settings (AzureProvider): `api_version`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from truckllm.config.schema import AzureProvider
from truckllm.errors import UpstreamFailed
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
from truckllm.providers.shared.model_ids import path_segment
from truckllm.providers.shared.reasoning import without_reasoning_state
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
PATHS: Mapping[Operation, str] = {
    Operation.CHAT: "chat/completions",
    Operation.COMPLETIONS: "completions",
    Operation.EMBEDDINGS: "embeddings",
    **media.PATHS,
}


def api_version(target: Target) -> str:
    settings = target.settings
    return settings.api_version if isinstance(settings, AzureProvider) else DEFAULT_API_VERSION


def upstream_url(operation: Operation, target: Target) -> str:
    path = PATHS[operation]
    if target.base_url.endswith("/openai/v1"):
        return f"{target.base_url}/{path}"
    deployment = path_segment(target.model)
    return f"{target.base_url}/openai/deployments/{deployment}/{path}?api-version={api_version(target)}"


def responses_endpoint(target: Target, key: UpstreamKey) -> tuple[str, dict[str, str]]:
    """Where the Responses API is spoken natively: Azure's v1 API, which every resource
    serves and which takes the deployment name as `model`."""
    root = target.base_url.removesuffix("/openai/v1")
    return f"{root}/openai/v1/responses", {"content-type": "application/json",
                                           **auth_headers(target, key.value)}


def auth_headers(target: Target, key: str) -> dict[str, str]:
    return {**target.headers, "api-key": key}


def build_media_request(operation: Operation, body: dict[str, Any], target: Target,
                        key: UpstreamKey, ctx: CallContext) -> UpstreamRequest:
    return media.media_request(operation, body, upstream_url(operation, target),
                               auth_headers(target, key.value), target.model, ctx)


def build_request(operation: Operation, body: dict[str, Any], target: Target, key: UpstreamKey,
                  ctx: CallContext) -> UpstreamRequest:
    url = upstream_url(operation, target)
    payload = {**(without_reasoning_state(body) if ctx.carry_reasoning else body), "model": target.model}
    stream = bool(payload.get("stream")) and operation in ("chat", "completions")
    if stream:
        # Always ask for usage so streams count; the chunk is dropped unless the client asked.
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    headers = {"content-type": "application/json", **auth_headers(target, key.value)}
    data = orjson.dumps(payload)
    if operation == "chat":
        data = with_short_tool_ids(payload, data)
    return UpstreamRequest("POST", url, headers, data, stream)


# ---- response -----------------------------------------------------------------------------


def parse_response(operation: Operation, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise UpstreamFailed("upstream answered with a body that is not JSON")
    items = data.get("data" if operation is Operation.EMBEDDINGS else "choices")
    if not isinstance(items, list):
        raise UpstreamFailed("upstream answered with a body of an unexpected shape")
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

    def __init__(self, operation: Operation, ctx: CallContext) -> None:
        self._ctx = ctx
        self._chat = operation == "chat"
        self.usage: Usage | None = None
        self._roles_sent: set[int] = set()         # choice indices whose role went out
        self._finished = False
        self._done = False
        self._envelope: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
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
        out: list[SSEEvent] = []
        for choice in choices:
            out += self._choice(choice)
        return out

    def close(self) -> list[SSEEvent]:
        if not (self._done or self._finished):
            raise UpstreamFailed("upstream stream ended before it finished")
        return [] if self._done else self._usage_chunk()

    def _choice(self, choice: dict[str, Any]) -> list[SSEEvent]:
        choice.pop("content_filter_results", None)
        finish = choice.get("finish_reason")
        out: list[SSEEvent] = []
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

    def _chunk(self, choice: dict[str, Any]) -> SSEEvent:
        body: dict[str, Any] = {**(self._envelope or {}), "model": self._ctx.alias, "choices": [choice]}
        if self._ctx.include_usage:
            body["usage"] = None
        return SSEEvent(None, orjson.dumps(body))

    def _usage_chunk(self) -> list[SSEEvent]:
        if not self._ctx.include_usage or self._envelope is None:
            return []
        body = {**self._envelope, "model": self._ctx.alias, "choices": [],
                "usage": (self.usage or Usage()).to_openai()}
        self._envelope = None       # exactly once
        return [SSEEvent(None, orjson.dumps(body))]


def new_stream_translator(operation: Operation, target: Target, ctx: CallContext) -> AzureStreamTranslator:
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
        url = f"{target.base_url}/openai/models?api-version={api_version(target)}"
    return UpstreamRequest("GET", url, auth_headers(target, key), None, False)


def operation(op: Operation) -> OperationSpec:
    if op in media.PASS_THROUGH_OPERATIONS:
        return OperationSpec(functools.partial(build_media_request, op), None, raw=True)
    streams = op is not Operation.EMBEDDINGS
    return OperationSpec(functools.partial(build_request, op), functools.partial(parse_response, op),
                         functools.partial(new_stream_translator, op) if streams else None)


SPEC = ProviderSpec(
    type="azure",
    default_base_url=None,
    operations=MappingProxyType({op: operation(op) for op in PATHS}),
    parse_error=parse_error,
    build_probe=build_probe,
)
