"""Gives every chat-speaking provider the `responses` operation (the OpenAI Responses API):
passed through natively to a provider with a Responses endpoint (`native`) unless the
target says `responses: chat`, otherwise translated through chat: the Responses request
becomes a chat request, the chat answer or chunk stream becomes a response object or the
Responses event stream.

Pure, no I/O. Imports only providers.base and the responses translators.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from truckllm.protocols.responses.answer import ResponseIds, from_chat_response, response_frame
from truckllm.protocols.responses.events import ResponsesEventWriter
from truckllm.protocols.responses.native import (
    NativeEndpoint,
    NativeResponsesStream,
    build_native_request,
    parse_native_response,
    speaks_natively,
)
from truckllm.protocols.responses.request import to_chat_request
from truckllm.providers.base import (
    CallContext,
    ParsedResponse,
    ProviderSpec,
    SSEEvent,
    StreamTranslator,
    Target,
    UpstreamRequest,
)
from truckllm.usage import Usage


def with_responses_inbound(spec: ProviderSpec, native: NativeEndpoint | None = None) -> ProviderSpec:
    if "responses" in spec.operations or "chat" not in spec.operations:
        return spec

    def is_native(target: Target) -> bool:
        return native is not None and speaks_natively(target)

    def build_request(op: str, body: dict[str, Any], target: Target, key: str,
                      ctx: CallContext) -> UpstreamRequest:
        if op != "responses":
            return spec.build_request(op, body, target, key, ctx)
        if native is not None and speaks_natively(target):
            return build_native_request(body, target, key, ctx, native)
        chat_ctx = chat_context(ctx)
        return spec.build_request("chat", dict(chat_ctx.client_body), target, key, chat_ctx)

    def parse_response(op: str, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
        if op != "responses":
            return spec.parse_response(op, raw, target, ctx)
        if is_native(target):
            return parse_native_response(raw, ctx)
        parsed = spec.parse_response("chat", raw, target, chat_context(ctx))
        body = dict(ctx.client_body)
        ids = ResponseIds(ctx.response_id)
        response = from_chat_response(orjson.loads(parsed.body),
                                      response_frame(body, ids, ctx.created, ctx.alias), ids,
                                      to_chat_request(body).tool_names)
        return ParsedResponse(orjson.dumps(response), parsed.usage)

    def new_stream_translator(op: str, target: Target, ctx: CallContext) -> StreamTranslator:
        if op != "responses":
            return spec.new_stream_translator(op, target, ctx)
        if is_native(target):
            return NativeResponsesStream(ctx)
        return ResponsesStream(spec.new_stream_translator("chat", target, chat_context(ctx)), ctx)

    return replace(spec, operations=spec.operations | {"responses"}, build_request=build_request,
                   parse_response=parse_response, new_stream_translator=new_stream_translator,
                   delegates={op: spec.delegates.get(op, spec) for op in spec.operations})


def chat_context(ctx: CallContext) -> CallContext:
    """The context of the chat request a Responses request becomes; streams always ask
    for usage, which response.completed carries."""
    return replace(ctx, client_body=to_chat_request(dict(ctx.client_body)).chat,
                   include_usage=ctx.stream)


class ResponsesStream:
    """A chat translator's chunks rewritten as Responses events."""

    def __init__(self, inner: StreamTranslator, ctx: CallContext) -> None:
        body = dict(ctx.client_body)
        ids = ResponseIds(ctx.response_id)
        self._inner = inner
        self._writer = ResponsesEventWriter(response_frame(body, ids, ctx.created, ctx.alias), ids,
                                            to_chat_request(body).tool_names)
        self.usage: Usage | None = None

    def feed(self, event: SSEEvent) -> list[bytes]:
        payloads = self._inner.feed(event)
        self.usage = self._inner.usage
        return [orjson.dumps(out) for payload in payloads
                for out in self._writer.feed(orjson.loads(payload))]

    def close(self) -> list[bytes]:
        payloads = self._inner.close()
        self.usage = self._inner.usage
        out = [event for payload in payloads for event in self._writer.feed(orjson.loads(payload))]
        return [orjson.dumps(event) for event in out + self._writer.finish()]
