"""The `responses` operation (the OpenAI Responses API) of every chat-speaking provider:
DIALECT serves it through chat (truckllm.protocols.through_chat: the Responses request
becomes a chat request, the chat answer or chunk stream a response object or the
Responses event stream), and `native_or_translated` lets a provider type with a Responses
endpoint of its own (`openai`, `azure`) pass it through instead, per target, unless the
target says `responses: chat`.

Pure, no I/O. Imports only providers.base, protocols.through_chat and the responses
translators.
"""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.errors import GatewayError
from truckllm.protocols.responses.answer import (
    ResponseIds,
    from_chat_response,
    new_response_id,
    response_frame,
    shown,
    wants_sealed_reasoning,
)
from truckllm.protocols.responses.events import ResponsesEventWriter
from truckllm.protocols.responses.native import (
    NativeEndpoint,
    NativeResponsesStream,
    build_native_request,
    parse_native_response,
    speaks_natively,
)
from truckllm.protocols.responses.request import dropped_tools, to_chat_request, tool_names
from truckllm.protocols.through_chat import ChatDialect, DialectStream
from truckllm.providers.base import (
    CallContext,
    OperationSpec,
    ParsedResponse,
    SSEEvent,
    StreamEnding,
    StreamTranslator,
    Target,
    UpstreamKey,
    UpstreamRequest,
)


def _failed(error: GatewayError, stream: StreamTranslator) -> list[SSEEvent]:
    """A failure after the start: `response.failed`, the event the official SDKs and Codex
    end a broken stream on, numbered after the events sent and holding the output items
    finished so far, which only the stream's translator knows."""
    writer = stream.writer if isinstance(stream, DialectStream) else stream
    assert isinstance(writer, ResponsesEvents | NativeResponsesStream), "not a Responses stream"
    return writer.fail(error)


# No `[DONE]` after a Responses stream: response.completed (or .incomplete, .failed) ends it.
RESPONSES_STREAM = StreamEnding(_failed, None)


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    return to_chat_request(body).chat


def from_chat_answer(chat: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """The client's response; the whole one (reasoning state included, whatever the
    client asked) goes to the context's `on_response`, for the store."""
    body = dict(ctx.client_body)
    ids = ResponseIds(ctx.response_id or new_response_id())
    response = from_chat_response(chat, response_frame(body, ids, ctx.created, ctx.alias), ids,
                                  tool_names(body))
    if ctx.on_response is not None:
        ctx.on_response(response)
    return shown(response, wants_sealed_reasoning(body))


class ResponsesEvents:
    """The event writer of a translated stream: chat chunks in, named Responses events out;
    the finished response goes to the context's `on_response`."""

    def __init__(self, ctx: CallContext) -> None:
        body = dict(ctx.client_body)
        ids = ResponseIds(ctx.response_id or new_response_id())
        self._writer = ResponsesEventWriter(response_frame(body, ids, ctx.created, ctx.alias), ids,
                                            tool_names(body),
                                            wants_sealed_reasoning(body))
        self._on_response = ctx.on_response

    def feed(self, chunk: dict[str, Any]) -> list[SSEEvent]:
        return [_named(event) for event in self._writer.feed(chunk)]

    def finish(self) -> list[SSEEvent]:
        return self._ended(self._writer.finish())

    def fail(self, error: GatewayError) -> list[SSEEvent]:
        return self._ended(self._writer.fail(error.body()["error"]))

    def _ended(self, events: list[dict[str, Any]]) -> list[SSEEvent]:
        """The last events, the final one carrying the finished response (the whole one,
        reasoning state included, goes to `on_response`)."""
        if self._on_response is not None and self._writer.response is not None:
            self._on_response(self._writer.response)
        return [_named(event) for event in events]


def _named(event: dict[str, Any]) -> SSEEvent:
    return SSEEvent(event["type"], orjson.dumps(event))


DIALECT = ChatDialect(chat_request, from_chat_answer, ResponsesEvents, RESPONSES_STREAM,
                      dropped_tools, carries_reasoning=True, asks_reasoning_summaries=True)


def native_or_translated(endpoint: NativeEndpoint, translated: OperationSpec) -> OperationSpec:
    """The `responses` operation of a provider type with a Responses endpoint: passed
    through to it, or `translated` (through chat) for a target with `responses: chat`."""
    build_translated, parse_translated = translated.build_request, translated.parse_response
    new_translated_stream = translated.new_stream_translator
    assert parse_translated is not None and new_translated_stream is not None

    def build_request(body: dict[str, Any], target: Target, key: UpstreamKey,
                      ctx: CallContext) -> UpstreamRequest:
        if speaks_natively(target):
            return build_native_request(body, target, key, ctx, endpoint)
        return build_translated(body, target, key, ctx)

    def parse_response(raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
        if speaks_natively(target):
            return parse_native_response(raw, ctx)
        return parse_translated(raw, target, ctx)

    def new_stream_translator(target: Target, ctx: CallContext) -> StreamTranslator:
        if speaks_natively(target):
            return NativeResponsesStream(ctx)
        return new_translated_stream(target, ctx)

    return OperationSpec(build_request, parse_response, new_stream_translator,
                         stream_ending=RESPONSES_STREAM)
