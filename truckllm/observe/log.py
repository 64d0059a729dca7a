"""Logging setup: structlog and the stdlib root logger (aiohttp's own lines) through one
redacting pipeline, as JSON or console lines.

Configuring logging is process-wide by nature: it happens in `configure_logging`, called
at start and when a reload changes the log settings. The access line, the request log and
the redactor live in access_log, request_log and redaction. Must not import the server,
state or dispatch.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from truckllm.observe.redaction import SecretRedactor

if TYPE_CHECKING:
    from truckllm.observe.access_log import AccessLog

LEVELS = ("debug", "info", "warning", "error")


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
        # One write per line (print() writes the newline apart): processes that share a
        # stream (--workers) would otherwise interleave halves of their lines.
        logger_factory=structlog.WriteLoggerFactory(out),
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


