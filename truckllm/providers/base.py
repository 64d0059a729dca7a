"""Types shared by every provider adapter. Types only: no I/O, no logic.

A provider adapter is a ProviderSpec: for each Operation it serves, an OperationSpec of pure
translation functions between what the client sent (the OpenAI wire format, or an inbound
dialect such as Anthropic Messages) and the upstream's, plus the upstream's error parser.
The transport (truckllm.pipeline.transport) does the I/O; dispatch combines the two.
Imports only config.schema, errors and usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from truckllm.config.schema import ProviderBase
from truckllm.errors import GatewayError
from truckllm.usage import Usage

if TYPE_CHECKING:
    from truckllm.runtime.state import CompiledProvider


class Operation(StrEnum):
    """The client-facing operations a request can ask for, one per /v1 endpoint. A StrEnum:
    its members are the strings logs, metrics and config use for them."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"                       # the Anthropic Messages API
    COUNT_TOKENS = "count_tokens"               # Anthropic's /v1/messages/count_tokens
    AUDIO_TRANSCRIPTIONS = "audio_transcriptions"
    AUDIO_TRANSLATIONS = "audio_translations"
    AUDIO_SPEECH = "audio_speech"
    IMAGES = "images"
    RESPONSES = "responses"                     # the OpenAI Responses API


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream a request may go to: compiled from config, model name resolved."""

    provider_id: str
    provider_type: str
    model: str                                  # the upstream model name
    base_url: str                               # no trailing slash
    headers: Mapping[str, str]                  # extra headers from config
    # The provider's own config (its type's pydantic class, e.g. AzureProvider with its
    # api_version); None only for a target built without one, which gets the defaults.
    settings: ProviderBase | None = None


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    """One upstream API key as the snapshot compiled it."""

    id: str
    value: str
    weight: float = 1.0
    ref: str = ""           # "provider/key": limits' and health's id for it
    # The request headers that carry this key (with the provider's extra headers), built
    # once per snapshot by the provider type's `key_headers`; empty when it has none.
    headers: Mapping[str, str] = field(default_factory=dict)


# Built once per request and read-only by convention: not `frozen`, because a frozen
# dataclass sets every field through object.__setattr__, on the hot path.
@dataclass(slots=True)
class CallContext:
    """What a translator needs to know about the client's request."""

    alias: str                  # the model name the client sent; responses carry it
    request_id: str
    created: int                # unix seconds, for translated responses and chunks
    stream: bool
    include_usage: bool         # the client asked for stream_options.include_usage
    # The request body as build_request received it. Answers whose shape depends on the
    # request read it here: legacy `functions`, embeddings' `encoding_format`, input sizes.
    client_body: Mapping[str, Any] = field(default_factory=dict)
    # Client headers a native pass-through forwards (e.g. `anthropic-beta` on /v1/messages).
    forward_headers: Mapping[str, str] = field(default_factory=dict)
    # The id a Responses API answer carries (`resp_...`), chosen by the server so that its
    # response store can keep it; empty for other operations.
    response_id: str = ""
    # Answers carry the provider's reasoning in the chat extension fields `reasoning_content`
    # and `reasoning_state` (truckllm.providers.shared.reasoning): set for dialects served
    # through chat, never for plain chat completions clients.
    carry_reasoning: bool = False
    # With carry_reasoning: the provider is asked for summaries of its reasoning to show
    # (Gemini's includeThoughts) as well as for the state it needs back.
    reasoning_summaries: bool = False
    # Responses API: called with the finished response object (completed, incomplete or
    # failed) when a stream's translator makes its last event, or a translated answer is
    # made (whole: reasoning state included whatever the client is shown), for the store.
    on_response: Callable[[dict[str, Any]], None] | None = None
    # For a dialect served through chat: the context of the chat request this request
    # becomes, translated once per request (truckllm.protocols.through_chat fills it) rather
    # than again by every attempt's build, parse and stream translator.
    as_chat: CallContext | None = None


@dataclass(slots=True)           # per request, read-only by convention (see CallContext)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    stream: bool
    # Tools of the client's request that the translation left out (they have no
    # equivalent upstream); named to the client in x-truckllm-dropped-tools.
    dropped_tools: tuple[str, ...] = ()


@dataclass(slots=True)
class ParsedResponse:
    body: bytes                 # the JSON the client receives, in its own API's shape
    usage: Usage | None


@dataclass(frozen=True, slots=True)
class UpstreamErrorInfo:
    """An upstream error reduced to what dispatch needs to classify and report it."""

    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    retry_after_s: float | None = None      # when the body says when to retry (Gemini RetryInfo)


@dataclass(slots=True)           # one per streamed event, read-only by convention (see CallContext)
class SSEEvent:
    """One server-sent event: its name (None for a plain `data:` event) and its payload.
    Upstream events are decoded into these, and translators hand the client's out as these;
    truckllm.pipeline.sse frames them."""

    event: str | None
    data: bytes


class StreamTranslator(Protocol):
    """Per-request state machine: upstream SSE events in, the client's events out.

    The events carry payloads only (framing and the stream's last event are the relay's).
    `feed` raises `truckllm.errors.GatewayError` for an upstream error event, and for an
    event it cannot read. `usage` holds the upstream's usage once seen, even when it is
    not forwarded to the client.
    """

    usage: Usage | None

    def feed(self, event: SSEEvent) -> list[SSEEvent]: ...

    def close(self) -> list[SSEEvent]: ...


# A translator may also have `feed_read`, a ReadFeeder, as a pass-through does: given an
# upstream read of whole plain events at once, most events then reach the client as the
# upstream's bytes of the read, in one write, rather than one by one. The relay looks the
# method up by name (a runtime-checked Protocol's isinstance costs more than a short
# stream's relay). It gets (read, payloads) and returns the client's bytes for `read`,
# which is `payloads` as unnamed events, each framed `data: <payload>\n\n`: what `feed`
# would make of them, framed; or None to leave them to `feed`, one by one. Raises nothing.
ReadFeeder = Callable[[bytes, list[bytes]], "bytes | None"]
# The same for a stream of named events (the Responses API's), as `feed_named_read`: it gets
# (read, the (name, payload) of each event), each framed `event: <name>\ndata: <payload>\n\n`.
NamedReadFeeder = Callable[[bytes, list[tuple[bytes, bytes]]], "bytes | None"]


@dataclass(frozen=True, slots=True)
class StreamEnding:
    """How a client API ends a stream: the events that report a failure once the stream
    has started, and the event after the last one (None: the API has none). The failure
    events are given the stream's translator: an API whose failure event reports the
    stream so far (the Responses API's `response.failed`) asks it."""

    error_events: Callable[[GatewayError, StreamTranslator], list[SSEEvent]]
    done: SSEEvent | None


def _openai_error_event(error: GatewayError, stream: StreamTranslator) -> list[SSEEvent]:
    return [SSEEvent(None, error.to_json())]


# OpenAI's: an `{"error": ...}` event, and `data: [DONE]` after everything.
OPENAI_STREAM = StreamEnding(_openai_error_event, SSEEvent(None, b"[DONE]"))


# (client body, target, upstream key, context) -> the upstream request
BuildRequest = Callable[[dict[str, Any], Target, UpstreamKey, CallContext], UpstreamRequest]
# (upstream body, target, context) -> the client's body and the usage
ParseResponse = Callable[[bytes, Target, CallContext], ParsedResponse]
# (target, context) -> a fresh translator for one streamed response
NewStreamTranslator = Callable[[Target, CallContext], StreamTranslator]


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """How one provider type serves one operation."""

    build_request: BuildRequest
    # None with `raw`: the answer is relayed as the upstream sent it (status, content type
    # and bytes), as audio and images are.
    parse_response: ParseResponse | None
    # None: the operation is never streamed to this provider (or is relayed raw).
    new_stream_translator: NewStreamTranslator | None = None
    raw: bool = False
    stream_ending: StreamEnding = OPENAI_STREAM


class UpstreamResponse(Protocol):
    """A response from upstream, over the network or from an in-process provider.

    A streamed body is read chunk by chunk by `read_chunk()` (b"" at its end), or by
    `iter_chunks()`. The idle limit (the longest wait for a chunk) runs from
    `watch_idle()`, called once data flows, and counts only the waits `read_chunk` is
    asked to mark (every one but the wait for the first chunk, which is time to first
    token). A failed read raises TransportError. A network response may also offer
    `push_to(sink)` (pipeline.transport): its chunks handed to the stream relay as they
    arrive, instead of each waking a `read_chunk`.
    """

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    async def read_chunk(self, marked: bool = True) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def watch_idle(self) -> None: ...

    def close(self) -> None: ...


# A whole answer: status, headers and body.
WholeResponse = tuple[int, Mapping[str, str], bytes]


class UpstreamTransport(Protocol):
    """What sends an UpstreamRequest: the network (truckllm.pipeline.transport.Transport),
    or a provider answering in-process (the mock). `send` returns a response whose body is
    still to be read (the caller closes it); `fetch` reads it whole."""

    def send(self, provider: CompiledProvider, target: Target, request: UpstreamRequest,
             request_id: str) -> Awaitable[UpstreamResponse]: ...

    def fetch(self, provider: CompiledProvider, target: Target, request: UpstreamRequest,
              request_id: str) -> Awaitable[WholeResponse]: ...


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider type: its defaults and, per operation it serves, its translation
    functions. Listed in truckllm.providers.registry.REGISTRY."""

    type: str
    default_base_url: str | None
    operations: Mapping[Operation, OperationSpec]
    # (status, upstream body) -> the error reduced to OpenAI terms
    parse_error: Callable[[int, bytes], UpstreamErrorInfo]
    # (target, upstream key value) -> a free request that shows whether the key works
    # (`GET /models` or equivalent, never anything billed); None: no active health checks
    build_probe: Callable[[Target, str], UpstreamRequest] | None = None
    # (the provider's extra headers, key value) -> the headers of a JSON request with that
    # key, compiled into UpstreamKey.headers once per snapshot; None: built per request.
    key_headers: Callable[[Mapping[str, str], str], Mapping[str, str]] | None = None
    # An upstream answering in-process (the mock); None: the network.
    transport: UpstreamTransport | None = None
