"""The access line: one log line per finished request, built from its RequestRecord.

Owns the line's fields and their order, the direct JSON writer, and the memory of which
recurring texts (method, path, model, error) the redactor needs to look at. Must not
import the server, state or dispatch.
"""

from __future__ import annotations

import codecs
import os
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog

from truckllm.observe.log import LEVELS
from truckllm.observe.redaction import SecretRedactor
from truckllm.pipeline.record import RequestRecord

# The fields of an access line, in their order.
ACCESS_FIELDS = ("request_id", "method", "path", "key_id", "alias", "provider", "upstream_model",
                 "status", "latency_ms", "overhead_ms", "ttft_ms", "prompt_tokens",
                 "completion_tokens", "tokens", "attempts", "stream", "cost_usd", "cost_lines",
                 "usage_estimated", "dropped_tools", "error")
_REMEMBERED_VERDICTS = 1024     # method, path and model are client-chosen: keep it bounded


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The fields of one access line: ids, outcome, timings, counts. No content."""
    return fill_access_fields(dict.fromkeys(ACCESS_FIELDS), record)


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond, rounded half up (timings are never negative)."""
    return (seconds * 1e6 + 0.5) // 1 / 1000


def fill_access_fields(fields: dict[str, Any], record: RequestRecord) -> dict[str, Any]:
    """Set the access line's fields of `record` in `fields`, which has ACCESS_FIELDS first,
    so the line keeps their order."""
    fields["request_id"] = record.request_id
    fields["method"] = record.method
    fields["path"] = record.path
    fields["key_id"] = record.key_id
    fields["alias"] = record.alias
    fields["provider"] = record.provider_id
    fields["upstream_model"] = record.upstream_model
    fields["status"] = record.status
    fields["latency_ms"] = _ms(record.latency_s)
    fields["overhead_ms"] = _ms(record.overhead_s)
    fields["ttft_ms"] = None if record.ttft_s is None else _ms(record.ttft_s)
    usage = record.usage
    if usage is None:
        fields["prompt_tokens"] = fields["completion_tokens"] = fields["tokens"] = 0
    else:
        fields["prompt_tokens"] = usage.prompt_tokens
        fields["completion_tokens"] = usage.completion_tokens
        fields["tokens"] = usage.total_tokens
    fields["attempts"] = record.attempts
    fields["stream"] = record.stream
    fields["cost_usd"] = record.cost_usd
    fields["cost_lines"] = list(record.cost_lines) if record.cost_lines else None
    fields["usage_estimated"] = record.usage_estimated
    fields["dropped_tools"] = list(record.dropped_tools) if record.dropped_tools else None
    fields["error"] = record.error_reason
    return fields


_access = structlog.get_logger("truckllm.access")     # a lazy proxy: follows reconfiguration
_ACCESS_EVENT = "request"
# Options of the direct access line: "Z" for UTC is what structlog's TimeStamper writes
# (`isoformat()` with "+00:00" replaced), and the newline makes the line one write.
_DIRECT_JSON = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


class AccessLog:
    """Writes the one access line of each request (a RecordObserver: call `write`).

    With `log_format: json` the line is rendered here rather than through structlog's
    bound logger and processor chain, the heaviest part of a request's bookkeeping. It is
    the same line: the same fields in the same order (`access_fields`, then event, level,
    timestamp), the same SecretRedactor instance (so secrets added by a reload are
    masked), the same level filter, one write to the same stream. structlog's contextvars
    are not merged: TruckLLM binds none. Console format, and a process whose logging was
    never configured, go through structlog.

    Redaction: of an access line's fields only five can hold text that a client or an
    upstream chose: request_id (X-Request-ID), method, path, upstream_model (a wildcard
    alias passes the client's model name on) and error (fixed words today, scanned in case
    that changes). The rest are numbers, booleans and None, or config ids and aliases,
    which the redactor never scans either. Those five texts (and the event's name) are
    searched for secrets and credentials; only when that finds one does the line go
    through the redactor field by field, so the line is masked exactly as structlog's
    would be. All but the request id recur from line to line, so the verdict on them is
    remembered here until the redactor's secrets change.
    """

    def __init__(self) -> None:
        self._stream: TextIO | None = None       # None: through structlog
        self._fd: int | None = None              # the stream's file, written to as bytes
        self._redactor = SecretRedactor()
        self._levels = frozenset(LEVELS)
        self._line = dict.fromkeys((*ACCESS_FIELDS, "event", "level", "timestamp"))
        self._level_of_status: dict[int, str] = {}
        self._verdicts: dict[tuple[str | None, ...], bool] = {}
        self._verdicts_version = -1     # the redactor's version they were given under

    def configure(self, level: str, fmt: str, redactor: SecretRedactor, stream: TextIO) -> None:
        self._stream = stream if fmt == "json" else None
        self._fd = _utf8_fileno(stream)
        self._redactor = redactor
        self._levels = frozenset(LEVELS[LEVELS.index(level):])

    def write(self, record: RequestRecord) -> None:
        level = (self._level_of_status.get(record.status)
                 or self._level_of_status.setdefault(record.status, record.level))
        stream = self._stream
        if stream is None:
            getattr(_access, level)(_ACCESS_EVENT, **access_fields(record))
            return
        if level not in self._levels:
            return
        # One dict, refilled for every line (all its keys are set again each time):
        # serialized before this returns, it is never seen outside.
        event = fill_access_fields(self._line, record)
        event["event"] = _ACCESS_EVENT
        redactor = self._redactor
        recurring = (record.method, record.path, record.upstream_model, record.error_reason,
                     _ACCESS_EVENT)
        # An id the gateway made up (24 hex digits of its own) has nothing to mask.
        if (self._recurring_would_mask(recurring)
                or (record.client_request_id and redactor.would_mask(record.request_id))):
            redactor(None, level, event)
        event["level"] = level
        event["timestamp"] = datetime.now(UTC)
        line = orjson.dumps(event, default=str, option=_DIRECT_JSON)
        if self._fd is None:
            stream.write(line.decode())
            stream.flush()
        else:
            written = os.write(self._fd, line)
            if written < len(line):
                _write_rest(self._fd, line, written)

    def _recurring_would_mask(self, texts: tuple[str | None, ...]) -> bool:
        """The redactor's `would_mask` of `texts` (None left out), remembered while its
        secrets stay the same."""
        redactor = self._redactor
        if self._verdicts_version != redactor.version:
            self._verdicts = {}
            self._verdicts_version = redactor.version
        verdict = self._verdicts.get(texts)
        if verdict is None:
            if len(self._verdicts) >= _REMEMBERED_VERDICTS:
                self._verdicts.clear()
            # NUL between the texts: no secret or credential pattern matches across it.
            verdict = self._verdicts[texts] = redactor.would_mask("\0".join(filter(None, texts)))
        return verdict


def _utf8_fileno(stream: TextIO) -> int | None:
    """The file under a UTF-8 text stream, which JSON lines can be written to as bytes
    (orjson's output) without decoding them to text and encoding them again. Ordering with
    the stream's other lines holds because each of them is flushed when written (structlog
    prints with flush=True; logging's StreamHandler flushes every record; stderr is line
    buffered). None for streams without a file (io.StringIO) or in another encoding."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):    # io.UnsupportedOperation is both
        return None
    encoding = getattr(stream, "encoding", None)
    return fd if encoding and codecs.lookup(encoding).name == "utf-8" else None


def _write_rest(fd: int, data: bytes, written: int) -> None:
    """Write what follows the first `written` bytes of `data`."""
    while written < len(data):      # a signal may interrupt a long write to a pipe
        data = data[written:]
        written = os.write(fd, data)
