"""Logging: structlog setup, the per-request access line, the admin request log, redaction.

Owns how log lines look (JSON or console), the bounded in-memory request log behind
GET /admin/v1/logs, and the last-line defence that masks secret values anywhere in a log
event. Consumes RequestRecords; must not import the server, state or dispatch.
Configuring structlog and the stdlib root logger is process-wide by nature: it happens in
`configure_logging`, called at start and when a reload changes the log settings.
"""

from __future__ import annotations

import codecs
import functools
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from truckllm.errors import InvalidRequest
from truckllm.pipeline.record import RequestRecord

LEVELS = ("debug", "info", "warning", "error")
REDACTED = "***"
_MIN_SECRET_LENGTH = 4      # shorter values would mask ordinary words; keys are longer
_FEW_SECRETS = 16           # up to this many, substring tests find a secret fastest
_BEARER = re.compile(r"\b(Bearer|Basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
# Words that _BEARER cannot match without: a text holding neither is not searched
_CREDENTIAL_WORDS = ("earer", "Basic")
_REMEMBERED_VERDICTS = 1024
_PLAIN_SCALARS = frozenset({int, float, bool})
# Fields whose values TruckLLM builds from config ids, aliases and its own words, never
# from what a client or upstream sent: not worth a scan on every access line. Anything a
# client controls (request id, path, method, a wildcard's upstream model) is still scanned.
_TRUSTED_FIELDS = frozenset({"timestamp", "level", "key_id", "alias", "provider",
                             "cost_lines", "usage_estimated"})
_SECRET_FIELD_NAMES = frozenset({
    "authorization", "proxy-authorization", "api_key", "api-key", "x-api-key", "apikey",
    "admin_api_key", "password", "secret", "x-goog-api-key", "cookie", "set-cookie",
})


class SecretRedactor:
    """A structlog processor masking known secret values and credential-shaped text.

    The set of secrets is replaced (not mutated) on every applied config, so a line
    logged during a reload sees either the old or the new set, both complete.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._pattern: re.Pattern[str] | None = None
        self._few: tuple[str, ...] | None = ()
        self._needles: tuple[str, ...] = _CREDENTIAL_WORDS
        # would_mask's verdicts on texts that recur line after line (see `recurring_verdict`)
        self.verdicts: dict[tuple[str | None, ...], bool] = {}
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        usable = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        # One alternation, longest first, so a secret containing another is masked whole.
        self._pattern = re.compile("|".join(map(re.escape, usable))) if usable else None
        # Whether a text holds a secret at all: for a few secrets a substring test each is
        # cheaper than searching the alternation (which tries it at every position whose
        # character starts some secret: 3 random keys cost 3x the tests, 16 about the same).
        self._few = tuple(usable) if len(usable) <= _FEW_SECRETS else None
        self._needles = (*(self._few or ()), *_CREDENTIAL_WORDS)
        self.verdicts = {}      # given under the old secrets: a new set may mask other texts

    def has_secret(self, text: str) -> bool:
        few = self._few
        if few is None:
            return self._pattern is not None and self._pattern.search(text) is not None
        for secret in few:      # noqa: SIM110 (any() over a generator costs twice this loop)
            if secret in text:
                return True
        return False

    def redact_text(self, text: str) -> str:
        if self.has_secret(text):
            text = self._pattern.sub(REDACTED, text) if self._pattern is not None else text
        if "earer" not in text and "Basic" not in text:     # cheap test before the regex
            return text
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)

    def would_mask(self, text: str) -> bool:
        """Whether redact_text would change `text`: the same two patterns, only tested."""
        # Almost every text holds none of the few secrets and neither word that a credential
        # pattern needs: one loop of substring tests says so (and costs no further call).
        for needle in self._needles:
            if needle in text:
                return self.has_secret(text) or _BEARER.search(text) is not None
        return self._few is None and self.has_secret(text)

    def recurring_verdict(self, texts: tuple[str | None, ...]) -> bool:
        """`would_mask` of `texts` (None left out), remembered in `verdicts` until the
        secrets change: for texts that recur on line after line, such as a method and a
        path. Read `verdicts` first; this is what a text not remembered yet costs."""
        verdicts = self.verdicts
        if len(verdicts) >= _REMEMBERED_VERDICTS:   # client-chosen texts: keep it bounded
            verdicts.clear()
        # NUL between the texts: no secret or credential pattern matches across it.
        verdict = verdicts[texts] = self.would_mask("\0".join(filter(None, texts)))
        return verdict

    def redact(self, value: Any) -> Any:
        if value is None or value.__class__ in _PLAIN_SCALARS:     # most fields: checked first
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {k: REDACTED if _is_secret_field(k) else self.redact(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.redact_text(bytes(value).decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact_text(str(value))

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        # Runs on every log line, access lines included. Most lines are flat: numbers,
        # trusted fields and short texts with nothing to mask. Which fields to look at
        # depends only on the field names (remembered per set of names); their texts are
        # scanned in one pass, joined by NUL (which no secret or credential pattern matches
        # across). Only when that pass would mask something, or a field has a secret's
        # name or a structured value, does each value go through redact().
        scanned = _scanned_fields(tuple(event))
        if scanned is None:
            return self._redact_each(event)
        texts: list[str] = []
        for name in scanned:
            value = event[name]
            if value.__class__ is str:
                texts.append(value)
            elif value is not None and value.__class__ not in _PLAIN_SCALARS:
                return self._redact_each(event)
        return self._redact_each(event) if self.would_mask("\0".join(texts)) else event

    def _redact_each(self, event: MutableMapping[str, Any]) -> Any:
        # Values are replaced in place (same keys, so iterating while assigning is safe).
        for name, value in event.items():
            if name in _TRUSTED_FIELDS:
                continue
            if _is_secret_field(name):
                event[name] = REDACTED
            elif value is not None and value.__class__ not in _PLAIN_SCALARS:
                event[name] = self.redact(value)
        return event


@functools.lru_cache(maxsize=256)       # sets of field names come from code: a few dozen
def _scanned_fields(names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The fields of an event with these names that may hold text to mask (not trusted);
    None when one of the names is a secret's, so the whole value is masked."""
    if any(map(_is_secret_field, names)):
        return None
    return tuple(name for name in names if name not in _TRUSTED_FIELDS)


@functools.lru_cache(maxsize=1024)      # field names come from code: a small, fixed set
def _is_secret_field(name: object) -> bool:
    return isinstance(name, str) and name.lower() in _SECRET_FIELD_NAMES


def configure_logging(level: str = "info", fmt: Literal["json", "console"] | str = "json",
                      redactor: SecretRedactor | None = None, stream: TextIO | None = None,
                      access: AccessLog | None = None) -> None:
    """Route structlog, stdlib logging (aiohttp's own) and `access` lines through one
    redacting pipeline."""
    out = sys.stderr if stream is None else stream
    redactor = SecretRedactor() if redactor is None else redactor
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,           # after exceptions are rendered to text, so tracebacks are masked too
    ]
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_json_line) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,    # a reload may change level or format
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("watchfiles").setLevel(logging.WARNING)   # "N changes detected" is noise
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHttpFilter) for f in server_log.filters):
        server_log.addFilter(MalformedHttpFilter())
    if access is not None:
        access.configure(level, fmt, redactor, out)


class MalformedHttpFilter(logging.Filter):
    """Bytes that are not HTTP at all (a garbage request line, a bad header) are the
    client's fault: aiohttp answers them with a plain 400 and closes the connection, and
    logs a traceback at error level. Say it in one warning line with the reason instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "malformed HTTP request refused with 400: %s"
            record.args = (str(error.message).splitlines()[0] if error.message else type(error).__name__,)
        return True


def _json_line(event: Any, option: int = 0, **_: Any) -> str:
    return orjson.dumps(event, default=str, option=option).decode()


# The fields of an access line, in their order.
ACCESS_FIELDS = ("request_id", "method", "path", "key_id", "alias", "provider", "upstream_model",
                 "status", "latency_ms", "overhead_ms", "ttft_ms", "prompt_tokens",
                 "completion_tokens", "tokens", "attempts", "stream", "cost_usd", "cost_lines",
                 "usage_estimated", "error")


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The fields of one access line: ids, outcome, timings, counts. No content."""
    return fill_access_fields(dict.fromkeys(ACCESS_FIELDS), record)


def fill_access_fields(fields: dict[str, Any], record: RequestRecord) -> dict[str, Any]:
    """Set the access line's fields of `record` in `fields`, which has ACCESS_FIELDS first.

    Assigned one by one into existing keys rather than built as a literal: a literal of
    more than 16 entries is compiled to one insertion per key, growing the table three times.
    """
    # One unpacking in RequestRecord's field order: cheaper than 18 attribute reads.
    (_, request_id, method, path, key_id, alias, provider_id, upstream_model, status, latency_s,
     overhead_s, ttft_s, usage, attempts, cost_usd, error_reason, stream, _, _, cost_lines,
     usage_estimated, _) = record
    fields["request_id"] = request_id
    fields["method"] = method
    fields["path"] = path
    fields["key_id"] = key_id
    fields["alias"] = alias
    fields["provider"] = provider_id
    fields["upstream_model"] = upstream_model
    fields["status"] = status
    # Milliseconds to the microsecond, rounded half up by float arithmetic alone:
    # `round(x, 3)` goes through a decimal string and costs ~2.5k instructions a timing.
    # Timings are never negative, and a microsecond is far coarser than the clock.
    fields["latency_ms"] = (latency_s * 1e6 + 0.5) // 1 / 1000
    fields["overhead_ms"] = (overhead_s * 1e6 + 0.5) // 1 / 1000
    fields["ttft_ms"] = None if ttft_s is None else (ttft_s * 1e6 + 0.5) // 1 / 1000
    if usage is None:
        fields["prompt_tokens"] = fields["completion_tokens"] = fields["tokens"] = 0
    else:
        fields["prompt_tokens"] = prompt = usage.prompt_tokens
        fields["completion_tokens"] = completion = usage.completion_tokens
        fields["tokens"] = prompt + completion      # Usage.total_tokens, without its call
    fields["attempts"] = attempts
    fields["stream"] = stream
    fields["cost_usd"] = cost_usd
    fields["cost_lines"] = list(cost_lines) if cost_lines else None   # lines are log-shaped
    fields["usage_estimated"] = usage_estimated
    fields["error"] = error_reason
    return fields


_access = structlog.get_logger("truckllm.access")     # a lazy proxy: follows reconfiguration
_ACCESS_EVENT = "request"
# Options of the direct access line: "Z" for UTC is what the TimeStamper above writes
# (`isoformat()` with "+00:00" replaced), and the newline makes the line one write.
_DIRECT_JSON = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


class AccessLog:
    """Writes the one access line of each request (a RecordObserver: call `write`).

    With `log_format: json` the line is rendered here rather than through structlog,
    which costs about five times as much per request (bound logger, five processors,
    renderer, print). It is the same line: the same fields in the same order
    (`access_fields`, then event, level, timestamp), the same SecretRedactor instance
    (so secrets added by a reload are masked), the same level filter, one write to the
    same stream. structlog's contextvars are not merged: TruckLLM binds none.
    Console format, and a process whose logging was never configured, go through structlog.

    Redaction: of an access line's fields only five can hold text that a client or an
    upstream chose: request_id (X-Request-ID), method, path, upstream_model (a wildcard
    alias passes the client's model name on) and error (fixed words today, scanned in case
    that changes). The rest are numbers, booleans and None (statuses, timings, counts,
    cost), or config ids and aliases (key_id, alias, provider, cost_lines' kinds), which
    the redactor never scans either. Those five texts (and the event's name, which
    structlog's redactor scans too) are searched for secrets and credentials; only when
    that finds one does the line go through the redactor field by field, so the line is
    masked exactly as structlog's would be. All but the request id recur from line to
    line, so the redactor's verdict on them is remembered (until a reload changes the
    secrets) and only the request id is searched on every line.
    """

    def __init__(self) -> None:
        self._stream: TextIO | None = None       # None: through structlog
        self._fd: int | None = None              # the stream's file, written to as bytes
        self._redactor = SecretRedactor()
        self._levels = frozenset(LEVELS)
        self._line = dict.fromkeys((*ACCESS_FIELDS, "event", "level", "timestamp"))
        self._level_of_status: dict[int, str] = {}

    def configure(self, level: str, fmt: str, redactor: SecretRedactor, stream: TextIO) -> None:
        self._stream = stream if fmt == "json" else None
        self._fd = _utf8_fileno(stream)
        self._redactor = redactor
        self._levels = frozenset(LEVELS[LEVELS.index(level):])

    def write(self, record: RequestRecord) -> None:
        # A record's level depends on its status alone: the property is read once per status.
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
        # The texts to scan (see the class docstring) other than the request id recur from
        # line to line: the redactor remembers its verdict on them. Read from the dict
        # (cheaper than the record's attributes).
        redactor = self._redactor
        recurring = (event["method"], event["path"], event["upstream_model"], event["error"],
                     _ACCESS_EVENT)
        masks = redactor.verdicts.get(recurring)
        if masks is None:
            masks = redactor.recurring_verdict(recurring)
        if masks or redactor.would_mask(event["request_id"]):
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


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Filters of GET /admin/v1/logs. `level` means that level or more severe;
    `status` is a code (`429`) or a class (`5xx`)."""

    limit: int = 100
    provider: str | None = None
    model: str | None = None
    key: str | None = None
    level: str | None = None
    status: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> LogQuery:
        limit = params.get("limit", "100")
        if not (limit.isascii() and limit.isdigit()) or int(limit) < 1:     # not '²'
            raise InvalidRequest("limit must be a positive integer", param="limit")
        level = params.get("level")
        if level is not None and level not in LEVELS:
            raise InvalidRequest(f"level must be one of {', '.join(LEVELS)}", param="level")
        status = params.get("status")
        if status is not None and not re.fullmatch(r"[1-5](\d\d|xx)", status):
            raise InvalidRequest("status must be a code such as 429 or a class such as 5xx",
                                 param="status")
        return cls(int(limit), params.get("provider"), params.get("model"), params.get("key"),
                   level, status)

    def matches(self, record: RequestRecord) -> bool:
        if self.provider is not None and record.provider_id != self.provider:
            return False
        if self.model is not None and self.model not in (record.alias, record.upstream_model):
            return False
        if self.key is not None and record.key_id != self.key:
            return False
        if self.level is not None and LEVELS.index(record.level) < LEVELS.index(self.level):
            return False
        return self.status is None or _status_matches(self.status, record.status)


def _status_matches(wanted: str, status: int) -> bool:
    if wanted.endswith("xx"):
        return status // 100 == int(wanted[0])
    return status == int(wanted)


class RequestLog:
    """The last N request records, newest first; what GET /admin/v1/logs shows."""

    def __init__(self, size: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=size)
        # add(record) is the deque's own method, called for every request: a method of
        # this class calling it would cost a Python call more. Rebound by `resize`, so a
        # caller that kept `add` must read it again after a resize.
        self.add: Callable[[RequestRecord], None] = self._records.appendleft

    @property
    def size(self) -> int:
        return self._records.maxlen or 0

    def resize(self, size: int) -> None:
        """Keep the newest entries that still fit (a reload may change request_log_size)."""
        if size != self.size:
            self._records = deque(islice(self._records, size), maxlen=size)
            self.add = self._records.appendleft

    def query(self, query: LogQuery) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for record in list(self._records):
            if len(found) >= query.limit:
                break
            if query.matches(record):
                found.append(log_entry(record))
        return found


def log_entry(record: RequestRecord) -> dict[str, Any]:
    """One entry of GET /admin/v1/logs (SPEC §6 fields first)."""
    timestamp = datetime.fromtimestamp(record.timestamp, UTC).isoformat(timespec="milliseconds")
    return {"timestamp": timestamp.replace("+00:00", "Z"), "level": record.level,
            "model": record.alias, **access_fields(record)}
