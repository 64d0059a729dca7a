"""Per upstream key counters for GET /admin/v1/providers: requests, tokens, errors, status.

Runtime state that survives reloads, keyed by ("provider id", "key id"); ids that vanish
from the config are dropped on reload. Fed from RequestRecords; no I/O, no config import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from truckllm.pipeline.record import RequestRecord, UpstreamFailure

Status = Literal["healthy", "degraded", "down"]
DOWN_AFTER_ERRORS = 3       # consecutive failed attempts before a key is shown as down
KeyId = tuple[str, str]


@dataclass(slots=True)
class KeyStats:
    requests: int = 0               # attempts sent with this key
    tokens: int = 0                 # tokens of its successful answers
    errors: int = 0                 # failed attempts
    consecutive_errors: int = 0
    last_error: str | None = None   # reason of the latest failure

    @property
    def status(self) -> Status:
        if self.consecutive_errors >= DOWN_AFTER_ERRORS:
            return "down"
        return "degraded" if self.consecutive_errors else "healthy"


class UpstreamStats:
    def __init__(self) -> None:
        self._keys: dict[KeyId, KeyStats] = {}

    def observe(self, record: RequestRecord) -> None:
        provider_id, upstream_key_id = record.provider_id, record.upstream_key_id
        usage, attempts, failures = record.usage, record.attempts, record.upstream_failures
        if failures:
            self._count_failures(failures)
        if attempts > len(failures) and provider_id is not None and upstream_key_id is not None:
            key = (provider_id, upstream_key_id)        # answered with this key
            stats = self._keys.get(key) or self._stats(key)     # a plain lookup once known
            stats.requests += 1
            stats.consecutive_errors = 0
            if usage is not None:       # Usage.total_tokens, without its call
                stats.tokens += usage.prompt_tokens + usage.completion_tokens

    def _count_failures(self, failures: tuple[UpstreamFailure, ...]) -> None:
        for failure in failures:
            stats = self._stats((failure.provider_id, failure.key_id))
            stats.requests += 1
            stats.errors += 1
            stats.consecutive_errors += 1
            stats.last_error = failure.reason

    def key(self, provider_id: str, key_id: str) -> KeyStats:
        return self._keys.get((provider_id, key_id)) or KeyStats()

    def retain(self, keys: Iterable[KeyId]) -> None:
        """After a reload: keep the counters of keys that still exist."""
        keep = set(keys)
        self._keys = {k: v for k, v in self._keys.items() if k in keep}

    def _stats(self, key: KeyId) -> KeyStats:
        stats = self._keys.get(key)
        if stats is None:
            stats = self._keys[key] = KeyStats()
        return stats


def provider_status(key_statuses: Iterable[Status]) -> Status:
    statuses = list(key_statuses)
    if statuses and all(s == "down" for s in statuses):
        return "down"
    return "healthy" if all(s == "healthy" for s in statuses) else "degraded"
