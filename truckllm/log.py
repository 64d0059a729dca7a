"""structlog setup and the access line written for every request. Log lines carry ids
and numbers only: never a key, a prompt or a completion."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

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


def log_access(record: RequestRecord) -> None:
    usage = record.usage
    _access.log(
        _LEVELS[record.level], "request",
        request_id=record.request_id, method=record.method, path=record.path,
        key_id=record.key_id, alias=record.alias, provider=record.provider_id,
        upstream_model=record.upstream_model, status=record.status,
        latency_ms=round(record.latency_s * 1000, 3),
        overhead_ms=round(record.overhead_s * 1000, 3),
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        attempts=record.attempts, stream=record.stream, error=record.error_reason,
    )
