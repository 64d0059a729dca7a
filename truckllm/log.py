"""structlog setup and the access line written for every request. Log lines carry ids
and numbers only: never a key, a prompt or a completion."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from truckllm.config.schema import ServerConfig
from truckllm.records import RequestRecord

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


_access = structlog.get_logger("truckllm.access")


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The access line's fields, in the order they are written."""
    usage = record.usage
    return {
        "request_id": record.request_id, "method": record.method, "path": record.path,
        "key_id": record.key_id, "alias": record.alias, "provider": record.provider_id,
        "upstream_model": record.upstream_model, "status": record.status,
        "latency_ms": round(record.latency_s * 1000, 3),
        "overhead_ms": round(record.overhead_s * 1000, 3),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "attempts": record.attempts, "stream": record.stream, "error": record.error_reason,
    }


def log_access(record: RequestRecord) -> None:
    """The access line through structlog (any format)."""
    _access.log(_LEVELS[record.level], "request", **access_fields(record))


def access_line(record: RequestRecord) -> str:
    """The JSON access line exactly as structlog's JSON chain would render it (same keys,
    same order), built directly: it is written once per request, and the processor chain
    cost about 40 µs of the request's CPU time (py-spy under `make bench`)."""
    fields = access_fields(record)
    fields["event"] = "request"
    fields["level"] = record.level
    fields["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()


def access_logger(settings: Callable[[], ServerConfig]) -> Callable[[RequestRecord], None]:
    """A record observer writing the access line; `settings` gives the current snapshot's
    server settings, so a reload that changes the level or format applies at once."""

    def observe(record: RequestRecord) -> None:
        server = settings()
        if server.log_format != "json":
            log_access(record)
            return
        if _LEVELS[record.level] < _LEVELS[server.log_level]:
            return
        sys.stderr.write(access_line(record))
        sys.stderr.flush()

    return observe
