"""One upstream stream relayed to the client: upstream bytes -> SSE events -> the
provider's translator -> framed client events, ending with `[DONE]` (after an SSE error
event when the upstream fails once the stream has started). Owns the upstream response
and the health attempt until the stream ends. No routing decisions; dispatch creates it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import structlog

from truckllm import errors
from truckllm.limits.estimate import stream_usage, streamed_text_chars
from truckllm.pipeline.health import Attempt
from truckllm.pipeline.record import Exchange, UpstreamFailure
from truckllm.pipeline.retry import (
    ErrorClass,
    Outcome,
    event_outcome,
    failure_reason,
    scrub_error,
    transport_failed,
)
from truckllm.pipeline.sse import DONE, SSEDecoder, frame
from truckllm.pipeline.transport import TransportError
from truckllm.providers.base import StreamTranslator, UpstreamResponse
from truckllm.providers.shared.upstream_errors import WRONG_SHAPE, wrong_shape

log = structlog.get_logger("truckllm.pipeline.stream")


class StreamRelay:
    """Upstream bytes -> SSE events -> translator -> framed client events. Owns the
    upstream response and the health attempt until the stream ends."""

    def __init__(self, response: UpstreamResponse, translator: StreamTranslator,
                 exchange: Exchange, attempt: Attempt, prompt_estimate: int = 0,
                 key_value: str = "", max_event_bytes: int | None = None) -> None:
        self._response = response
        self._chunks = response.iter_chunks()
        self._decoder = SSEDecoder(max_event_bytes)
        self._translator = translator
        self._exchange = exchange
        self._attempt = attempt
        self._key_value = key_value         # masked in any upstream words sent on
        self._ended = False
        self._abandoned = False
        self._pending: errors.GatewayError | None = None    # raised after the chunks before it
        self._prompt_estimate = prompt_estimate
        # What was sent, kept (not parsed) for the usage estimate of a stream that is cut
        # short or never reports usage: parsing every chunk just in case cost ~16 calls
        # per event on the hot path. Holds no more than the stream's own output.
        self._sent: list[bytes] = []
        self._complete = False          # the upstream stream reached its end

    async def first_output(self) -> bytes:
        """Read until the translator has something for the client (or upstream ended)."""
        async for raw in self._chunks:
            out = self._translate(raw)
            if out:
                return out
        self._ended = True
        return self._finish()

    async def rest(self) -> AsyncGenerator[bytes, None]:
        try:
            if not self._ended:
                if self._pending is not None:
                    raise self._pending
                async for raw in self._chunks:
                    out = self._translate(raw)
                    if out:
                        yield out
                    if self._pending is not None:
                        raise self._pending
                yield self._finish()
        except errors.GatewayError as exc:     # an error event from upstream mid-stream
            scrub_error(exc, self._key_value)
            self._failed(event_outcome(exc, now_unix=time.time()))
            self._exchange.error_reason = exc.type
            yield frame(exc.to_json())
        except TransportError as exc:
            # Too late to try elsewhere: end the stream with an error event, count the
            # failure against the upstream, and close it.
            outcome = transport_failed(exc.kind, str(exc))
            self._failed(outcome)
            error = (errors.UpstreamTimeout(outcome.message)
                     if outcome.error_class is ErrorClass.TIMEOUT
                     else errors.UpstreamFailed(outcome.message))
            self._exchange.error_reason = outcome.error_class.value
            yield frame(error.to_json())
        finally:
            self.abandon()
        yield DONE

    def _failed(self, outcome: Outcome) -> None:
        """A failure after the first byte: health counts it, and so does the request's
        list of failed attempts (metrics, admin counters), like one before it."""
        self._attempt.failed(outcome)
        exchange = self._exchange
        exchange.upstream_failures.append(UpstreamFailure(
            exchange.provider_id or "", exchange.upstream_key_id or "", failure_reason(outcome)))

    def close_upstream(self) -> None:
        self._response.close()

    def abandon(self) -> None:
        """The stream is over, finished or not: close upstream, end the attempt."""
        if self._abandoned:
            return
        self._abandoned = True
        # A stream cut short (client gone, upstream failure) or one without reported usage
        # is charged an estimate rather than nothing (docs/limits.md).
        reported = self._translator.usage
        needs_estimate = reported is None or not self._complete
        text_chars = sum(streamed_text_chars(p) for p in self._sent) if needs_estimate else 0
        self._sent = []
        usage, estimated = stream_usage(reported, complete=self._complete,
                                        prompt_estimate=self._prompt_estimate,
                                        text_chars=text_chars)
        self._exchange.usage = usage
        self._exchange.usage_estimated = estimated
        self._response.close()
        self._attempt.end(usage.total_tokens if usage else 0)

    def _translate(self, raw: bytes) -> bytes:
        """Framed client events for one upstream read. Runs once per chunk: it calls the
        translator directly (no wrapper per event) and frames a lone event without a join."""
        translator = self._translator
        events = self._decoder.feed(raw)
        payloads: list[bytes] = []
        error: errors.GatewayError | None = None
        try:
            match events:               # (`match`, not len(): no call per event)
                case [event]:           # one event per read, the common case: no list to grow
                    payloads = translator.feed(event)
                case _:
                    for event in events:
                        payloads += translator.feed(event)
        except WRONG_SHAPE as exc:
            error = _unreadable(exc, "a stream event")
        except errors.GatewayError as exc:
            error = exc
        if error is not None:
            if not payloads:
                raise error
            # Chunks translated before an error event in the same read still reach the client.
            self._pending = error
        if not payloads:
            return b""
        self._sent += payloads
        match payloads:
            case [payload]:         # nothing to join
                return frame(payload)
            case _:
                return b"".join([frame(p) for p in payloads])

    def _finish(self) -> bytes:
        translator = self._translator
        events = self._decoder.flush()
        try:
            payloads = [p for event in events for p in translator.feed(event)]
        except WRONG_SHAPE as exc:
            raise _unreadable(exc, "a stream event") from None
        try:
            payloads += translator.close()
        except WRONG_SHAPE as exc:
            raise _unreadable(exc, "a stream") from None
        self._complete = True
        self._sent += payloads
        self._exchange.usage = translator.usage
        return b"".join([frame(p) for p in payloads])


def _unreadable(exc: Exception, what: str) -> errors.GatewayError:
    """A translator's failure on a malformed upstream event is an upstream failure (an SSE
    error event, or the next attempt before the first byte), not a stalled stream."""
    log.warning("upstream_event_unreadable", error=f"{type(exc).__name__}: {exc}")
    return wrong_shape(what)
