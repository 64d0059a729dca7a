"""One config everywhere: a change made through the admin API of one instance (a config
POSTed, a client key created, changed or revoked) is published on the shared state
server (`server.state_url`, Redis pub/sub), and every other instance validates it,
writes its own config file atomically and applies it — or keeps its config, and says
why in its log and `GET /admin/v1/status` (`state_backend.config_sync`).

What travels is the config file's text, `${VAR}` references and all: each instance
fills them in from its own environment, so secrets never pass through Redis unless they
are written literally in the file. A change made while an instance was not listening
(down, or Redis unreachable) is not replayed: that instance keeps its file. Must not
import the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog

from truckllm.config.loader import LoadedConfig
from truckllm.limits.redis_link import FAILURES, PREFIX, StateLink
from truckllm.runtime.reloader import Reloader, ReloadResult

log = structlog.get_logger("truckllm.reload")

CHANNEL = f"{PREFIX}config"
SHARED_TRIGGERS = frozenset({"admin_config", "admin_keys"})   # what is published
RECEIVED_TRIGGER = "shared"                                     # what applying one is called


class ConfigSync:
    """Publishes this instance's admin changes and applies the other instances'."""

    def __init__(self, link: StateLink, reloader: Reloader[Any]) -> None:
        self.link = link
        self.reloader = reloader
        self.last: dict[str, Any] | None = None       # the latest change received
        self._published: set[asyncio.Task[None]] = set()
        link.config_sync = self.status

    def applied(self, loaded: LoadedConfig, result: ReloadResult) -> None:
        """The reloader's hook: publish what an admin of this instance changed."""
        if not result.ok or not result.changed or result.trigger not in SHARED_TRIGGERS:
            return
        message = orjson.dumps({"origin": self.link.instance, "sha256": loaded.sha256,
                                "config": loaded.raw.decode("utf-8", "replace")})
        task = asyncio.get_running_loop().create_task(self._publish(message, loaded.sha256))
        self._published.add(task)
        task.add_done_callback(self._published.discard)

    async def _publish(self, message: bytes, sha256: str) -> None:
        try:
            receivers = await asyncio.wait_for(self.link.client.publish(CHANNEL, message), 2.0)
        except FAILURES as exc:
            log.warning("config_not_shared", sha256=sha256, error=type(exc).__name__,
                        detail="the other instances keep their config")
            return
        log.info("config_shared", sha256=sha256, receivers=receivers)

    async def run(self) -> None:
        """For the app's lifetime: listen for the other instances' changes."""
        while True:
            try:
                await self._listen()
            except FAILURES:
                await asyncio.sleep(1.0)        # the link's probe logs the outage

    async def _listen(self) -> None:
        pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    await self._received(message["data"])
        finally:
            await pubsub.aclose()

    async def _received(self, data: bytes) -> None:
        try:
            change = orjson.loads(data)
            origin, sha256, text = change["origin"], change["sha256"], change["config"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("config_change_unreadable")
            return
        if origin == self.link.instance:
            return
        raw = str(text).encode()
        result = await self.reloader.apply_edit(lambda current: raw, RECEIVED_TRIGGER)
        outcome = "applied" if result.ok else "kept own config"
        self.last = {"from": origin, "sha256": sha256, "at": time.time(), "result": outcome,
                     "errors": [issue.as_dict() for issue in result.errors]}
        if result.ok:
            log.info("config_change_applied", origin=origin, sha256=result.sha256)
        else:
            log.warning("config_change_refused", origin=origin, sha256=sha256,
                        errors=[str(issue) for issue in result.errors[:5]],
                        detail="this instance keeps its config")

    def status(self) -> dict[str, Any]:
        return {"channel": CHANNEL, "last_received": self.last}
