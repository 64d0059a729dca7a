"""The admin request log: the last N RequestRecords, newest first, and the filters of
GET /admin/v1/logs. Must not import the server, state or dispatch.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from truckllm.errors import InvalidRequest
from truckllm.observe.access_log import access_fields
from truckllm.observe.log import LEVELS
from truckllm.pipeline.record import RequestRecord


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

    def add(self, record: RequestRecord) -> None:
        self._records.appendleft(record)

    @property
    def size(self) -> int:
        return self._records.maxlen or 0

    def resize(self, size: int) -> None:
        """Keep the newest entries that still fit (a reload may change request_log_size)."""
        if size != self.size:
            self._records = deque(islice(self._records, size), maxlen=size)

    def query(self, query: LogQuery) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for record in list(self._records):
            if len(found) >= query.limit:
                break
            if query.matches(record):
                found.append(log_entry(record))
        return found


def log_entry(record: RequestRecord) -> dict[str, Any]:
    """One entry of GET /admin/v1/logs: when, level and model first, then the access line's fields."""
    timestamp = datetime.fromtimestamp(record.timestamp, UTC).isoformat(timespec="milliseconds")
    return {"timestamp": timestamp.replace("+00:00", "Z"), "level": record.level,
            "model": record.alias, **access_fields(record)}
