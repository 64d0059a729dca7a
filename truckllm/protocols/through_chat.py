"""An inbound API dialect served through chat: how a provider that speaks only OpenAI chat
answers another client API (Anthropic Messages; the OpenAI Responses API the same way).

A dialect is its pure translators (ChatDialect); `through_chat` composes them with a
provider's chat OperationSpec into the OperationSpec of the dialect's operation. The
registry does this once per provider type (truckllm.providers.registry), so dispatch sees
one plain OperationSpec per operation and never re-dispatches.

Pure, no I/O. Imports only providers.base and usage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson

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
from truckllm.usage import Usage


class EventWriter(Protocol):
    """Per stream: OpenAI chat chunks (decoded) in, the dialect's events out."""

    def feed(self, chunk: dict[str, Any]) -> list[SSEEvent]: ...

    def finish(self) -> list[SSEEvent]: ...


@dataclass(frozen=True, slots=True)
class ChatDialect:
    """A client API's translators to and from OpenAI chat. Each raises
    truckllm.errors.InvalidRequest for a request it cannot translate."""

    # the client's request body -> an OpenAI chat request body
    to_chat_request: Callable[[dict[str, Any]], dict[str, Any]]
    # an OpenAI chat completion (decoded) -> the client's answer body
    from_chat_answer: Callable[[dict[str, Any], CallContext], dict[str, Any]]
    new_event_writer: Callable[[CallContext], EventWriter]
    stream_ending: StreamEnding
    # the client's request body -> the tools to_chat_request leaves out, by type
    dropped_tools: Callable[[dict[str, Any]], tuple[str, ...]] = lambda body: ()
    # The dialect shows the provider's reasoning: chat answers and chunks carry it in the
    # extension fields of truckllm.providers.shared.reasoning (CallContext.carry_reasoning).
    carries_reasoning: bool = False
    # ... and asks the provider for summaries of its reasoning (CallContext.reasoning_summaries).
    asks_reasoning_summaries: bool = False


def through_chat(chat: OperationSpec, dialect: ChatDialect) -> OperationSpec:
    """The operation of `dialect`, served by a provider's `chat` operation."""

    def build_request(body: dict[str, Any], target: Target, key: UpstreamKey,
                      ctx: CallContext) -> UpstreamRequest:
        chat_ctx = chat_context(dialect, ctx)
        request = chat.build_request(dict(chat_ctx.client_body), target, key, chat_ctx)
        request.dropped_tools = dialect.dropped_tools(dict(ctx.client_body))
        return request

    def parse_response(raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
        assert chat.parse_response is not None
        parsed = chat.parse_response(raw, target, chat_context(dialect, ctx))
        answer = dialect.from_chat_answer(orjson.loads(parsed.body), ctx)
        return ParsedResponse(orjson.dumps(answer), parsed.usage)

    new_chat_stream = chat.new_stream_translator

    def new_stream_translator(target: Target, ctx: CallContext) -> StreamTranslator:
        assert new_chat_stream is not None
        inner = new_chat_stream(target, chat_context(dialect, ctx))
        return DialectStream(inner, dialect.new_event_writer(ctx))

    return OperationSpec(build_request, parse_response,
                         None if new_chat_stream is None else new_stream_translator,
                         stream_ending=dialect.stream_ending)


def chat_context(dialect: ChatDialect, ctx: CallContext) -> CallContext:
    """The context of the chat request the client's request becomes, worked out on the
    first call for this request and kept on `ctx`. Streams always ask for usage: the
    dialect's own stream events report it. Answers carry the provider's reasoning for a
    dialect that shows it."""
    if ctx.as_chat is None:
        ctx.as_chat = replace(ctx, client_body=dialect.to_chat_request(dict(ctx.client_body)),
                              include_usage=ctx.stream, carry_reasoning=dialect.carries_reasoning,
                              reasoning_summaries=dialect.asks_reasoning_summaries)
    return ctx.as_chat


class DialectStream:
    """A chat translator's chunks rewritten as the dialect's stream events. `writer` is
    public: a dialect's stream ending may ask it about the stream so far."""

    def __init__(self, inner: StreamTranslator, writer: EventWriter) -> None:
        self._inner = inner
        self.writer = writer
        self.usage: Usage | None = None
        # A translator whose chunks are the upstream's own (the OpenAI pass-through) hands
        # them over decoded, as it read them, rather than as bytes to be read again.
        self._decoded: DecodedFeeder | None = getattr(inner, "feed_decoded", None)

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        if self._decoded is not None:
            chunks = self._decoded(event)
        else:
            chunks = [orjson.loads(chunk.data) for chunk in self._inner.feed(event)]
        self.usage = self._inner.usage
        out: list[SSEEvent] = []
        for chunk in chunks:
            out += self.writer.feed(chunk)
        return out

    def close(self) -> list[SSEEvent]:
        chunks = self._inner.close()
        self.usage = self._inner.usage
        out = [out for chunk in chunks for out in self.writer.feed(orjson.loads(chunk.data))]
        return out + self.writer.finish()


# A chat translator's `feed_decoded`, when it has one: the chunks `feed` would forward,
# decoded (their `model` the upstream's: a dialect names the alias itself).
DecodedFeeder = Callable[[SSEEvent], list[dict[str, Any]]]
