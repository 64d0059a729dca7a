"""Types shared by every provider adapter. Types only: no I/O, no logic.

A provider adapter is a ProviderSpec: pure translation functions between the OpenAI
wire format (what clients speak) and the upstream's, plus the upstream's error parser.
The transport (truckllm.pipeline.transport) does the I/O; dispatch combines the two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from truckllm.usage import Usage

# The client-facing operations a request can ask for. Issue-specific ones are added here.
Operation = Literal[
    "chat", "completions", "embeddings",
    "messages",                                  # Anthropic Messages API, native pass-through
    "count_tokens",                              # Anthropic's /v1/messages/count_tokens, native only
    "audio_transcriptions", "audio_translations", "audio_speech", "images",   # pass-through
    "responses",                                 # OpenAI Responses API (through chat or native)
]


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream a request may go to: compiled from config, model name resolved."""

    provider_id: str
    provider_type: str
    model: str                                  # the upstream model name
    base_url: str                               # no trailing slash
    headers: Mapping[str, str]                  # extra headers from config
    options: Mapping[str, Any] = field(default_factory=dict)  # type-specific settings


# Built once per request and read-only by convention: not `frozen`, because a frozen
# dataclass sets every field through object.__setattr__, which costs microseconds per
# request on the hot path. Nothing assigns to these after construction.
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


@dataclass(slots=True)           # per request, read-only by convention (see CallContext)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    stream: bool


@dataclass(slots=True)
class ParsedResponse:
    body: bytes                 # the OpenAI-shaped JSON the client receives
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
    event: str | None
    data: bytes


class StreamTranslator(Protocol):
    """Per-request state machine: upstream SSE events in, OpenAI chunk payloads out.

    `feed` returns serialised `chat.completion.chunk` JSON payloads (no `data:` framing,
    no `[DONE]`: the server frames them and ends the stream). It raises
    `truckllm.errors.GatewayError` for an upstream error event. `usage` holds the
    upstream's usage once seen, even when it is not forwarded to the client.
    """

    usage: Usage | None

    def feed(self, event: SSEEvent) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class UpstreamResponse(Protocol):
    """A response from upstream, over the network or from an in-process provider."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


# An in-process upstream (the mock provider): answers an UpstreamRequest with no network.
LocalHandler = Callable[[UpstreamRequest, Target], Awaitable[UpstreamResponse]]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider type: its defaults and translation functions. Listed in REGISTRY."""

    type: str
    default_base_url: str | None
    operations: frozenset[str]
    # (operation, client OpenAI body, target, upstream key value, context) -> request
    build_request: Callable[[str, dict[str, Any], Target, str, CallContext], UpstreamRequest]
    # (operation, upstream body, target, context) -> OpenAI-shaped body and usage
    parse_response: Callable[[str, bytes, Target, CallContext], ParsedResponse]
    # (operation, target, context) -> a fresh translator for one streamed response
    new_stream_translator: Callable[[str, Target, CallContext], StreamTranslator]
    # (status, upstream body) -> the error reduced to OpenAI terms
    parse_error: Callable[[int, bytes], UpstreamErrorInfo]
    local: LocalHandler | None = None
    # (target, upstream key value) -> a free request that shows whether the key works
    # (`GET /models` or equivalent, never anything billed); None: no active health checks
    build_probe: Callable[[Target, str], UpstreamRequest] | None = None
    # Operations this spec's functions only hand on, unchanged, to another spec's (a spec
    # extended with `messages` passes chat through): callers that look an operation up
    # here (dispatch, via the compiled provider) call that spec directly.
    delegates: Mapping[str, ProviderSpec] = field(default_factory=dict)
