"""One upstream stream relayed to the client: upstream bytes -> SSE events -> the
provider's translator -> the client's events, framed here and only here. The stream ends
the way the client's API ends one (StreamEnding: `[DONE]` for OpenAI's, after an error
event when the upstream fails once the stream has started). Owns the upstream response
and the health attempt until the stream ends. No routing decisions; dispatch creates it.

After the first event, an upstream response that can push its chunks (a network one)
hands each to the relay as it arrives, and the relay writes it to the client's
connection at once while the client keeps up; the request's task sleeps meanwhile and
writes only what could not go that way. Either way one chunk is translated at a time,
in the order it came, by the same `_translate`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

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
from truckllm.pipeline.sse import SSEDecoder, frame
from truckllm.pipeline.transport import TransportError
from truckllm.providers.base import (
    NamedReadFeeder,
    ReadFeeder,
    SSEEvent,
    StreamEnding,
    StreamTranslator,
    UpstreamResponse,
)
from truckllm.providers.shared.upstream_errors import WRONG_SHAPE, wrong_shape

log = structlog.get_logger("truckllm.pipeline.stream")

# Writes framed events to the client (aiohttp's StreamResponse.write).
Writer = Callable[[bytes], Awaitable[None]]


class DirectWriter(Protocol):
    """The client's connection, written to at once, outside the request's task: for
    upstream chunks relayed from the moment they arrive (`UpstreamResponse.push_to`)."""

    def ready(self) -> bool:
        """The client keeps up: nothing is waiting to be sent to it."""
        ...

    def write(self, data: bytes) -> None: ...


class StreamRelay:
    """Upstream bytes -> SSE events -> translator -> framed client events. Owns the
    upstream response and the health attempt until the stream ends."""

    def __init__(self, response: UpstreamResponse, translator: StreamTranslator,
                 ending: StreamEnding, exchange: Exchange, attempt: Attempt,
                 prompt_estimate: int = 0, key_value: str = "",
                 max_event_bytes: int | None = None) -> None:
        self._response = response
        self._decoder = SSEDecoder(max_event_bytes)
        self._translator = translator
        # A translator that takes a read of whole plain events at once (a pass-through),
        # or of whole named ones (the Responses API's), is given each such read whole.
        self._feed_read: ReadFeeder | None = getattr(translator, "feed_read", None)
        self._feed_named_read: NamedReadFeeder | None = getattr(translator, "feed_named_read", None)
        self._ending = ending
        self._exchange = exchange
        self._attempt = attempt
        self._key_value = key_value         # masked in any upstream words sent on
        self._ended = False
        self._abandoned = False
        self._pending: errors.GatewayError | None = None    # raised after the chunks before it
        self._prompt_estimate = prompt_estimate
        # What was sent, as framed, kept (not parsed) for the usage estimate of a stream
        # that is cut short or never reports usage: most streams report their usage and
        # finish, and then this is never read. Holds no more than the stream's own output,
        # copied into one buffer so that each upstream read is freed as soon as it is
        # written (a long stream holding every read measurably slowed the whole process).
        self._sent = bytearray()
        self._complete = False          # the upstream stream reached its end

    async def first_output(self) -> bytes:
        """Read until the translator has something for the client (or upstream ended)."""
        upstream = self._response
        raw = await upstream.read_chunk(marked=False)       # time to first token
        if raw:
            upstream.watch_idle()       # the idle limit starts once data flows
        while raw:
            out = self._translate(raw)
            if out:
                return out
            raw = await upstream.read_chunk()
        self._ended = True
        return self._finish()

    async def write_rest(self, write: Writer, direct: DirectWriter | None = None) -> bytes:
        """Write the rest of the stream to the client as it comes, and return its last
        bytes (the client API's end of a stream, if it has one), which the caller sends
        with the end of the response in one write. The relay writes rather than yields:
        each chunk then passes through no generator on its way.

        Given `direct`, and an upstream response that can push its chunks, each chunk is
        relayed as it arrives, written by `direct` while the client keeps up; the reads
        below then return only what could not be relayed so (the client slow to read),
        and end with the stream."""
        try:
            if not self._ended:
                if self._pending is not None:
                    raise self._pending
                if direct is not None:
                    self._push_to(direct)
                read = self._response.read_chunk
                while raw := await read():
                    out = self._translate(raw)
                    if out:
                        await write(out)
                    if self._pending is not None:
                        raise self._pending
                out = self._finish()
                if out:
                    await write(out)
        except errors.GatewayError as exc:     # an error event from upstream mid-stream
            scrub_error(exc, self._key_value)
            self._failed(event_outcome(exc, now_unix=time.time()))
            self._exchange.error_reason = exc.type
            out = self._error_frames(exc)
            if out:
                await write(out)
        except TransportError as exc:
            # Too late to try elsewhere: end the stream with an error event, count the
            # failure against the upstream, and close it.
            outcome = transport_failed(exc.kind, str(exc))
            self._failed(outcome)
            error = (errors.UpstreamTimeout(outcome.message)
                     if outcome.error_class is ErrorClass.TIMEOUT
                     else errors.UpstreamFailed(outcome.message))
            self._exchange.error_reason = outcome.error_class.value
            out = self._error_frames(error)
            if out:
                await write(out)
        finally:
            self.abandon()
        done = self._ending.done
        return b"" if done is None else frame(done)

    def _push_to(self, direct: DirectWriter) -> None:
        push_to = getattr(self._response, "push_to", None)
        if push_to is None:
            return                  # an in-process provider: read as it comes

        def relay(raw: bytes) -> bool:
            if not direct.ready():
                return False
            out = self._translate(raw)
            if out:
                direct.write(out)
            if self._pending is not None:
                raise self._pending
            return True

        push_to(relay)

    def _error_frames(self, error: errors.GatewayError) -> bytes:
        """The client API's failure events, framed; the translator knows the stream so far."""
        return b"".join([frame(event) for event in self._ending.error_events(error, self._translator)])

    def _failed(self, outcome: Outcome) -> None:
        """A failure after the first byte: health counts it, and so does the request's
        list of failed attempts (metrics, admin counters), like one before it."""
        self._attempt.failed(outcome)
        exchange = self._exchange
        exchange.add_failure(UpstreamFailure(
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
        text_chars = (sum(streamed_text_chars(e.data) for e in SSEDecoder().feed(bytes(self._sent)))
                      if needs_estimate else 0)
        self._sent = bytearray()
        usage, estimated = stream_usage(reported, complete=self._complete,
                                        prompt_estimate=self._prompt_estimate,
                                        text_chars=text_chars)
        self._exchange.usage = usage
        self._exchange.usage_estimated = estimated
        self._response.close()
        self._attempt.end(usage.total_tokens if usage else 0)

    def _translate(self, raw: bytes) -> bytes:
        """The client's framed events for one upstream read ("" when it has none yet)."""
        whole: bytes | None = None
        if self._feed_read is not None:
            payloads = self._decoder.whole_data_events(raw)
            if payloads is not None:
                whole = self._feed_read(raw, payloads)
        elif self._feed_named_read is not None:
            named = self._decoder.whole_named_events(raw)
            if named is not None:
                whole = self._feed_named_read(raw, named)
        if whole is not None:
            if whole:
                self._sent += whole
            return whole
        translator = self._translator
        events: list[SSEEvent] = []
        error: errors.GatewayError | None = None
        try:
            for event in self._decoder.feed(raw):
                events += translator.feed(event)
        except WRONG_SHAPE as exc:
            error = _unreadable(exc, "a stream event")
        except errors.GatewayError as exc:
            error = exc
        if error is not None:
            if not events:
                raise error
            # Events translated before an error event in the same read still reach the client.
            self._pending = error
        if not events:
            return b""
        out = frame(events[0]) if len(events) == 1 else b"".join([frame(event) for event in events])
        self._sent += out
        return out

    def _finish(self) -> bytes:
        translator = self._translator
        try:
            events = [out for event in self._decoder.flush() for out in translator.feed(event)]
        except WRONG_SHAPE as exc:
            raise _unreadable(exc, "a stream event") from None
        try:
            events += translator.close()
        except WRONG_SHAPE as exc:
            raise _unreadable(exc, "a stream") from None
        self._complete = True
        self._exchange.usage = translator.usage
        out = b"".join([frame(event) for event in events])
        self._sent += out
        return out


def _unreadable(exc: Exception, what: str) -> errors.GatewayError:
    """A translator's failure on a malformed upstream event is an upstream failure (an SSE
    error event, or the next attempt before the first byte), not a stalled stream."""
    log.warning("upstream_event_unreadable", error=f"{type(exc).__name__}: {exc}")
    return wrong_shape(what)
