"""OpenTelemetry traces (`server.otel`): a SERVER span per request and a CLIENT span per
upstream attempt, named and tagged by the OpenTelemetry GenAI conventions, exported over
OTLP/HTTP by the SDK's batch processor (its own thread, off the event loop).

The SDK is imported only when `server.otel` is configured: with it absent, `Tracing.on`
is False, the gateway makes no trace, and nothing here runs per request. A client's W3C
`traceparent` (and `tracestate`) is continued, and each attempt passes its own span's
context upstream. Spans carry ids, aliases, model names, token counts and statuses; never
prompt or completion text, and never a key's value.

Hooked in where requests are already reported: the gateway starts a RequestTrace on the
request's Exchange (truckllm.pipeline.record.TraceHook), dispatch tells it when an
attempt begins and fails, and the gateway hands it the finished RequestRecord. Must not import the server or dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from truckllm.config.schema import OtelConfig
from truckllm.pipeline.record import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger("truckllm.traces")

# gen_ai.operation.name of each client-facing operation (dispatch's `op`) and path.
_OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat",
               "completions": "text_completion", "embeddings": "embeddings",
               "images": "generate_content", "audio_speech": "generate_content",
               "audio_transcriptions": "generate_content", "audio_translations": "generate_content"}
_PATH_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/messages": "chat", "/v1/responses": "chat",
                    "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}
# gen_ai.provider.name of each provider type (the convention's well-known values).
_PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic",
                   "gemini": "gcp.gemini", "mock": "truckllm.mock"}


class Tracing:
    """The process's tracer, following `server.otel` across reloads."""

    def __init__(self) -> None:
        self.on = False
        self._config: OtelConfig | None = None
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None

    def configure(self, config: OtelConfig | None) -> None:
        """Start, stop or re-point tracing; a provider replaced is flushed off the loop."""
        if config == self._config:
            return
        old = self._provider
        self._config, self._provider, self._tracer, self.on = config, None, None, False
        if old is not None:
            _shut_down_later(old)
        if config is None:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from truckllm import __version__

        resource = Resource.create({SERVICE_NAME: config.service_name,
                                    SERVICE_VERSION: __version__})
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=config.endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self._provider = provider
        self._tracer = provider.get_tracer("truckllm", __version__)
        self.on = True
        log.info("tracing on", endpoint=config.endpoint, service_name=config.service_name)

    def start(self, headers: Mapping[str, str], method: str, path: str) -> RequestTrace:
        """The trace of a request arriving now, continuing the client's `traceparent`."""
        assert self._tracer is not None
        return RequestTrace(self._tracer, headers, method, path)

    def shutdown(self) -> None:
        """Flush and stop (blocking: call it off the event loop)."""
        provider, self._provider, self._tracer, self.on = self._provider, None, None, False
        self._config = None
        if provider is not None:
            provider.shutdown()


def _shut_down_later(provider: TracerProvider) -> None:
    with contextlib.suppress(RuntimeError):     # no running loop: flush here and now
        asyncio.get_running_loop().run_in_executor(None, provider.shutdown)
        return
    provider.shutdown()


class RequestTrace:
    """The spans of one request: its SERVER span and the CLIENT span of the attempt in
    progress. Owned by the request's Exchange; used on the event loop only."""

    __slots__ = ("_attempt", "_attempt_number", "_context", "_headers", "_span", "_tracer")

    def __init__(self, tracer: Tracer, headers: Mapping[str, str], method: str,
                 path: str) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        # W3C trace context only: a client's baggage is not passed on to upstreams.
        parent = TraceContextTextMapPropagator().extract(_carrier(headers))
        operation = _PATH_OPERATIONS.get(path, "")
        self._span: Span = tracer.start_span(
            f"{operation or method} {path}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path,
                        **({"gen_ai.operation.name": operation} if operation else {})})
        self._context = set_span_in_context(self._span)
        self._attempt: Span | None = None
        self._attempt_number = 0
        self._headers: dict[str, str] = {}

    def attempt_began(self, op: str, provider_id: str, provider_type: str, model: str,
                      key_id: str) -> None:
        """An upstream attempt starts: its span, child of the request's, and the
        `traceparent` it passes upstream (see `upstream_headers`)."""
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._end_attempt()
        self._attempt_number += 1
        operation = _OPERATIONS.get(op, op)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": _PROVIDER_NAMES.get(provider_type, provider_type),
            "gen_ai.request.model": model, "truckllm.provider": provider_id,
            "truckllm.upstream_key": key_id, "truckllm.attempt": self._attempt_number}
        self._attempt = self._tracer.start_span(f"{operation} {model}", context=self._context,
                                                kind=SpanKind.CLIENT, attributes=attributes)
        headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(headers, context=set_span_in_context(self._attempt))
        self._headers = headers

    def upstream_headers(self) -> dict[str, str]:
        """`traceparent` (and `tracestate`) of the attempt in progress, for its request."""
        return self._headers

    def attempt_failed(self, reason: str) -> None:
        """The attempt in progress failed before anything reached the client."""
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            from opentelemetry.trace import Status, StatusCode
            attempt.set_attribute("error.type", reason)
            attempt.set_status(Status(StatusCode.ERROR, reason))
            attempt.end()

    def finish(self, record: RequestRecord) -> None:
        from opentelemetry.trace import Status, StatusCode

        end_ns = time.time_ns()
        usage = record.usage
        tokens: dict[str, Any] = {} if usage is None else {
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens}
        attempt, self._attempt = self._attempt, None
        if attempt is not None:           # the last attempt: it answered (or the client left)
            attempt.set_attributes(tokens)
            if record.upstream_model:
                attempt.set_attribute("gen_ai.response.model", record.upstream_model)
            failure = (record.upstream_failures[-1].reason
                       if len(record.upstream_failures) >= self._attempt_number else None)
            if failure is not None:       # it broke off after its first byte
                attempt.set_attribute("error.type", failure)
                attempt.set_status(Status(StatusCode.ERROR, failure))
            elif record.status == 499:
                attempt.set_attribute("error.type", "client_disconnected")
            attempt.end(end_ns)
        span = self._span
        operation = _PATH_OPERATIONS.get(record.path)
        if record.alias is not None:
            span.update_name(f"{operation or record.method} {record.alias}")
            span.set_attribute("truckllm.alias", record.alias)
            span.set_attribute("gen_ai.request.model", record.alias)
        if record.key_id is not None:
            span.set_attribute("truckllm.key", record.key_id)
        if record.upstream_model:
            span.set_attribute("gen_ai.response.model", record.upstream_model)
        if record.provider_id:
            span.set_attribute("truckllm.provider", record.provider_id)
        span.set_attributes({**tokens, "truckllm.attempts": record.attempts,
                             "http.response.status_code": record.status})
        if record.cost_usd is not None:
            span.set_attribute("truckllm.cost_usd", record.cost_usd)
        if record.error_reason is not None:
            span.set_attribute("error.type", record.error_reason)
        if record.status >= 500:
            span.set_status(Status(StatusCode.ERROR, record.error_reason or str(record.status)))
        span.end(end_ns)

    def _end_attempt(self) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.end()


def _carrier(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace headers of a request (aiohttp's headers are case-insensitive, the
    propagator's carrier a plain dict of lower-case names)."""
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name)
        if value is not None:
            carrier[name] = value
    return carrier
