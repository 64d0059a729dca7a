"""Start the real gateway app in-process for limits tests: a config file in a temp dir,
an injectable clock, an OpenAI SDK client per key."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from truckllm.config.loader import load_file
from truckllm.limits import Clock, Limiter
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server.app import create_app
from truckllm.server.keys import LIMITER, OPS

ADMIN_KEY = "admin-secret-1"


@dataclass
class Gateway:
    app: web.Application
    url: str                    # ends in /v1
    root: str                   # http://127.0.0.1:PORT
    # Closed when the gateway stops (see tests/gateway.py: a client left to the garbage
    # collector logs a traceback into whichever test runs then).
    clients: list[AsyncOpenAI] = field(default_factory=list)

    def client(self, key: str) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=10)
        self.clients.append(client)
        return client

    @property
    def limiter(self) -> Limiter:
        return self.app[LIMITER]

    async def admin(self, method: str, path: str, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.request(method, self.root + path, headers=headers) as response:
            return response.status, await response.json()

    @contextmanager
    def log_lines(self) -> Iterator[list[dict[str, Any]]]:
        """The JSON log lines (access lines included) written inside the block, read from
        the log stream the gateway writes to; the list is filled when the block ends."""
        stream = io.StringIO()
        self.app[OPS].configure_logging(stream)
        lines: list[dict[str, Any]] = []
        try:
            yield lines
        finally:
            lines.extend(orjson.loads(line) for line in stream.getvalue().splitlines())
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()


@asynccontextmanager
async def make_gateway(config_text: str, directory: Path, clock: Clock | None = None,
                       name: str = "config.yaml") -> AsyncIterator[Gateway]:
    path = directory / name
    path.write_text(config_text)
    loaded = load_file(path, env={})
    app = create_app(StateHolder(build_state(loaded, version=1)), clock=clock)
    server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
    await server.start_server()
    root = str(server.make_url("")).rstrip("/")
    gateway = Gateway(app, root + "/v1", root)
    try:
        yield gateway
    finally:
        for client in gateway.clients:
            await client.close()
        await server.close()
