"""Gives every chat-speaking provider the `messages` operation (the Anthropic Messages API
inbound) by translating through chat: the Anthropic request becomes a chat request, the
chat answer or stream becomes Anthropic's. Providers that speak Messages natively
(`anthropic`) keep their own.

Pure, no I/O. Imports only base and anthropic_inbound.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from truckllm.protocols.anthropic_inbound import (
    AnthropicEventWriter,
    from_chat_response,
    to_chat_request,
)
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


def with_messages_inbound(spec: ProviderSpec) -> ProviderSpec:
    if "messages" in spec.operations or "chat" not in spec.operations:
        return spec

    def build_request(op: str, body: dict[str, Any], target: Target, key: str,
                      ctx: CallContext) -> UpstreamRequest:
        if op != "messages":
            return spec.build_request(op, body, target, key, ctx)
        chat_ctx = chat_context(ctx)
        return spec.build_request("chat", dict(chat_ctx.client_body), target, key, chat_ctx)

    def parse_response(op: str, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
        if op != "messages":
            return spec.parse_response(op, raw, target, ctx)
        parsed = spec.parse_response("chat", raw, target, chat_context(ctx))
        message = from_chat_response(orjson.loads(parsed.body), ctx.alias)
        return ParsedResponse(orjson.dumps(message), parsed.usage)

    def new_stream_translator(op: str, target: Target, ctx: CallContext) -> StreamTranslator:
        if op != "messages":
            return spec.new_stream_translator(op, target, ctx)
        return MessagesStream(spec.new_stream_translator("chat", target, chat_context(ctx)), ctx.alias)

    return replace(spec, operations=spec.operations | {"messages"}, build_request=build_request,
                   parse_response=parse_response, new_stream_translator=new_stream_translator,
                   delegates={op: spec.delegates.get(op, spec) for op in spec.operations})


def chat_context(ctx: CallContext) -> CallContext:
    """The context of the chat request a Messages request becomes; streams always ask for
    usage, which Anthropic's message_delta must carry."""
    return replace(ctx, client_body=to_chat_request(dict(ctx.client_body)), include_usage=ctx.stream)


class MessagesStream:
    """A chat translator's chunks rewritten as Anthropic stream events."""

    def __init__(self, inner: StreamTranslator, alias: str) -> None:
        self._inner = inner
        self._writer = AnthropicEventWriter(alias)
        self.usage: Usage | None = None

    def feed(self, event: SSEEvent) -> list[bytes]:
        payloads = self._inner.feed(event)
        self.usage = self._inner.usage
        return [out for payload in payloads for out in self._writer.feed(orjson.loads(payload))]

    def close(self) -> list[bytes]:
        payloads = self._inner.close()
        self.usage = self._inner.usage
        out = [out for payload in payloads for out in self._writer.feed(orjson.loads(payload))]
        return out + self._writer.finish()
