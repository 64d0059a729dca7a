"""The Responses API store: responses kept for `previous_response_id` and
GET/DELETE /v1/responses/{id}, each owned by the client key that made it.

One small interface (ResponseStore) with two implementations: in memory, and a SQLite
file (mode 0600, used through worker threads so the event loop never blocks). Both are
bounded and drop expired entries. Stored text is never logged here.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

# Responses kept at most; the oldest go first beyond it.
DEFAULT_MAX_ENTRIES = 100_000
# How often (seconds) the SQLite store deletes expired rows, at the next write.
_SWEEP_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str                       # the client key id ("" when the API is open)
    created_at: float
    expires_at: float
    response: dict[str, Any]         # the response object as the client got it
    input_items: list[dict[str, Any]]   # everything that went in: earlier turns and this one's
    provider_id: str = ""            # who answered, so a follow-up can go there first
    key_id: str = ""                 # the upstream key that answered
    native: bool = False             # the upstream holds the response under the same id

    def to_json(self) -> bytes:
        return orjson.dumps({"response": self.response, "input_items": self.input_items,
                             "provider_id": self.provider_id, "key_id": self.key_id,
                             "native": self.native})


class ResponseStore(Protocol):
    async def put(self, stored: StoredResponse) -> None: ...

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response if it exists, has not expired and belongs to `owner`; else None."""

    async def delete(self, response_id: str, owner: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryResponseStore:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    async def put(self, stored: StoredResponse) -> None:
        self._entries[stored.id] = stored
        self._entries.move_to_end(stored.id)
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self._max and oldest.expires_at > now:
                break
            self._entries.popitem(last=False)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        stored = self._entries.get(response_id)
        if stored is None or stored.owner != owner:
            return None
        if stored.expires_at <= self._clock():
            del self._entries[response_id]
            return None
        return stored

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        del self._entries[response_id]
        return True

    async def close(self) -> None:
        self._entries.clear()


class SqliteResponseStore:
    """A SQLite file; every statement runs in a worker thread, one at a time."""

    def __init__(self, path: Path, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._last_sweep = 0.0

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created private before SQLite opens it: stored prompts are the users' text.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL,"
                   " created_at REAL NOT NULL, expires_at REAL NOT NULL, body BLOB NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)")
        self._db = db
        self._sweep(self._clock())

    async def put(self, stored: StoredResponse) -> None:
        await asyncio.to_thread(self._put, stored, stored.to_json())

    def _put(self, stored: StoredResponse, body: bytes) -> None:
        with self._lock:
            db = self._connection()
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                       (stored.id, stored.owner, stored.created_at, stored.expires_at, body))
            now = self._clock()
            if now - self._last_sweep >= _SWEEP_EVERY_S:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Expired rows go, then the oldest beyond the bound."""
        db = self._connection()
        self._last_sweep = now
        db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                   "ORDER BY created_at DESC LIMIT -1 OFFSET ?)", (self._max,))

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id, owner)

    def _get(self, response_id: str, owner: str) -> StoredResponse | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT owner, created_at, expires_at, body FROM responses WHERE id = ?",
                (response_id,)).fetchone()
        if row is None or row[0] != owner or row[2] <= self._clock():
            return None
        body = orjson.loads(row[3])
        return StoredResponse(response_id, row[0], row[1], row[2], body["response"],
                              body["input_items"], body.get("provider_id", ""),
                              body.get("key_id", ""), bool(body.get("native")))

    async def delete(self, response_id: str, owner: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id, owner)

    def _delete(self, response_id: str, owner: str) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                "DELETE FROM responses WHERE id = ? AND owner = ? AND expires_at > ?",
                (response_id, owner, self._clock()))
        return cursor.rowcount > 0

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the response store is closed")
        return self._db


def store_path(config_file: str | Path, store: str) -> Path:
    """`responses.store` resolved beside the config file."""
    path = Path(store).expanduser()
    return path if path.is_absolute() else Path(config_file).parent / path
