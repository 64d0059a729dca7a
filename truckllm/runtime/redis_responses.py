"""The Responses API store in Redis (`server.state_url`): a response stored by one
instance is found by every other, so a `previous_response_id` may land anywhere.

Each response is one string key (`truckllm:resp:<id>`) expiring with the response
(`responses.ttl_days`, on Redis's clock); Redis's own memory policy bounds the total.
Deleting checks the owner on the server (one script). While Redis is unreachable,
responses are kept in this process's memory and looked up there too. Stored text is
never logged here. Must not import the server.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson

from truckllm.limits.redis_link import FAILURES, PREFIX, StateLink
from truckllm.runtime.response_store import MemoryResponseStore, StoredResponse

_DELETE_OWNED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if cjson.decode(raw)['owner'] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisResponseStore:
    def __init__(self, link: StateLink) -> None:
        self.link = link
        self.local = MemoryResponseStore()      # while Redis is unreachable
        self._delete = link.script(_DELETE_OWNED)

    async def put(self, stored: StoredResponse) -> None:
        ttl_ms = int((stored.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        value = orjson.dumps({"owner": stored.owner, "created_at": stored.created_at,
                              "expires_at": stored.expires_at,
                              "body": orjson.loads(stored.to_json())})
        if self.link.up:
            try:
                await self.link.client.set(_name(stored.id), value, px=ttl_ms)
                return
            except FAILURES as exc:
                self.link.failed(exc)
        await self.local.put(stored)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        if self.link.up:
            try:
                raw = await self.link.client.get(_name(response_id))
            except FAILURES as exc:
                self.link.failed(exc)
            else:
                if raw is not None:
                    return _decode(response_id, raw, owner)
        return await self.local.get(response_id, owner)

    async def delete(self, response_id: str, owner: str) -> bool:
        deleted = await self.local.delete(response_id, owner)
        if self.link.up:
            # down: the link is marked so, and the key expires with its TTL
            with contextlib.suppress(*FAILURES):
                answer = await self.link.call(self._delete, [_name(response_id)], [owner])
                deleted = bool(answer) or deleted
        return deleted

    async def close(self) -> None:
        await self.local.close()    # the connection is the link's, closed with the app


def _name(response_id: str) -> str:
    return f"{PREFIX}resp:{response_id}"


def _decode(response_id: str, raw: bytes | str, owner: str) -> StoredResponse | None:
    try:
        entry: dict[str, Any] = orjson.loads(raw)
        body = entry["body"]
        if entry["owner"] != owner or float(entry["expires_at"]) <= time.time():
            return None
        return StoredResponse(response_id, entry["owner"], float(entry["created_at"]),
                              float(entry["expires_at"]), body["response"], body["input_items"],
                              body.get("provider_id", ""), body.get("key_id", ""),
                              bool(body.get("native")))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
