"""The Responses API store, both implementations through the same interface: owned per
client key, expiry, the bound, and (SQLite) a private file that survives a restart."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from truckllm.runtime.response_store import (
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_stored(response_id: str, owner: str = "team-a", *, at: float = 1_000_000.0,
                ttl: float = 3600.0) -> StoredResponse:
    return StoredResponse(response_id, owner, at, at + ttl,
                          {"id": response_id, "object": "response", "output": []},
                          [{"type": "message", "role": "user", "content": "hi"}], "claude", "k1")


@pytest.fixture(params=["memory", "sqlite"])
async def make_store(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[Callable[[Clock, int], ResponseStore]]:
    opened: list[ResponseStore] = []

    def make(clock: Clock, max_entries: int = 100) -> ResponseStore:
        if request.param == "memory":
            store: ResponseStore = MemoryResponseStore(max_entries, clock)
        else:
            store = SqliteResponseStore(tmp_path / "responses.db", max_entries, clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def _open(store: ResponseStore) -> ResponseStore:
    if isinstance(store, SqliteResponseStore):
        await store.open()
    return store


async def test_a_response_belongs_to_its_key(make_store: Callable[[Clock, int], ResponseStore]) -> None:
    store = await _open(make_store(Clock(), 100))
    await store.put(make_stored("resp_1"))
    found = await store.get("resp_1", "team-a")
    assert found is not None and found.response["id"] == "resp_1" and found.provider_id == "claude"
    assert found.input_items == [{"type": "message", "role": "user", "content": "hi"}]
    assert await store.get("resp_1", "team-b") is None
    assert not await store.delete("resp_1", "team-b")
    assert await store.delete("resp_1", "team-a")
    assert await store.get("resp_1", "team-a") is None


async def test_expired_responses_are_gone(make_store: Callable[[Clock, int], ResponseStore]) -> None:
    clock = Clock()
    store = await _open(make_store(clock, 100))
    await store.put(make_stored("resp_old", ttl=10))
    clock.now += 11
    assert await store.get("resp_old", "team-a") is None
    assert not await store.delete("resp_old", "team-a")


async def test_the_store_is_bounded(make_store: Callable[[Clock, int], ResponseStore]) -> None:
    clock = Clock()
    store = await _open(make_store(clock, 3))
    for i in range(5):
        clock.now += 61          # past the SQLite store's sweep interval
        await store.put(make_stored(f"resp_{i}", at=clock.now))
    assert [await store.get(f"resp_{i}", "team-a") is not None for i in range(5)] == \
        [False, False, True, True, True]


async def test_sqlite_file_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "responses.db"
    store = SqliteResponseStore(path)
    await store.open()
    await store.put(make_stored("resp_kept", at=9e9))
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = SqliteResponseStore(path)
    await reopened.open()
    try:
        found = await reopened.get("resp_kept", "team-a")
        assert found is not None and found.key_id == "k1"
    finally:
        await reopened.close()
