"""Test harness: the real TruckLLM app on a real port, built from a config dict, and a
real `truckllm serve` process. Factories start with make_."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI, OpenAI

from truckllm.config.loader import load_bytes
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server.app import create_app

CLIENT_KEY = "tk-test-client-key-0001"


def make_config(upstream_url: str | None = None, **sections: Any) -> dict[str, Any]:
    """A config with a mock provider, an openai provider at `upstream_url` if given,
    aliases `demo` (mock), `gpt` (openai: gpt-4o-mini), `openai/*`, and one client key."""
    providers: list[dict[str, Any]] = [{"id": "demo", "type": "mock"}]
    models: list[dict[str, Any]] = [{"alias": "demo", "targets": [{"provider": "demo", "model": "mock-1"}]}]
    if upstream_url:
        providers.append({"id": "up", "type": "openai", "base_url": upstream_url,
                          "keys": [{"id": "k1", "value": "sk-upstream-secret-1"}]})
        models += [
            {"alias": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
            {"alias": "embed", "targets": [{"provider": "up", "model": "text-embedding-3-small"}]},
            {"alias": "openai/*", "targets": [{"provider": "up", "model": "*"}]},
        ]
    config: dict[str, Any] = {
        "version": 1,
        "server": {"log_level": "warning"},
        "providers": providers,
        "models": models,
        "keys": [{"id": "team", "key": CLIENT_KEY}],
    }
    config.update(sections)
    return config


@dataclass
class Gateway:
    url: str                    # base URL ending in /v1
    root: str                   # http://127.0.0.1:port
    app: web.Application
    # SDK clients handed out, closed when the gateway stops: one left open is closed by
    # the garbage collector later, on a loop that is gone, and logs a traceback into
    # whichever test happens to be running then.
    clients: list[AsyncOpenAI | OpenAI] = field(default_factory=list)

    def client(self, key: str = CLIENT_KEY, **options: Any) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, **options)
        self.clients.append(client)
        return client

    def sync_client(self, key: str = CLIENT_KEY, **options: Any) -> OpenAI:
        client = OpenAI(base_url=self.url, api_key=key, max_retries=0, **options)
        self.clients.append(client)
        return client

    def http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(base_url=self.root, timeout=aiohttp.ClientTimeout(total=10))


@asynccontextmanager
async def make_gateway(config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AsyncIterator[Gateway]:
    raw = yaml.safe_dump(dict(config)).encode()
    loaded = load_bytes(raw, "test.yaml", env or {})
    app = create_app(StateHolder(build_state(loaded, 1)))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    root = str(server.make_url("")).rstrip("/")
    gateway = Gateway(root + "/v1", root, app)
    try:
        yield gateway
    finally:
        for client in gateway.clients:
            await client.close() if isinstance(client, AsyncOpenAI) else client.close()
        await server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def make_serve_process(config_path: Path, env: Mapping[str, str] | None = None,
                       port: int | None = None) -> Iterator[ServeProcess]:
    """`truckllm serve` as a real process; waits until /health answers."""
    port = port or free_port()
    log_path = config_path.with_suffix(".log")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "truckllm", "serve", "-c", str(config_path), "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    running = ServeProcess(process, port, log_path)
    try:
        _wait_healthy(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _wait_healthy(running: ServeProcess, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"truckllm exited early:\n{running.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{running.port}/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"truckllm did not become healthy:\n{running.log()}")


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
