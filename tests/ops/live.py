"""A real `truckllm serve` subprocess for ops tests: config file, env, captured output.

Every wait is bounded; the process is stopped with SIGTERM (then killed) on exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from openai import AsyncOpenAI

WORKTREE = Path(__file__).resolve().parents[2]
START_LIMIT_S = 20.0
STOP_LIMIT_S = 20.0
WAIT_LIMIT_S = 15.0

ENV = {
    "ADMIN_KEY": "adm-7f3c9e1b5d-secret",
    "TEAM_KEY": "team-a-4b8d2f6a0c-secret",
    "MOCK_KEY": "mock-upstream-9e5a1c-secret",
    "OPENAI_KEY": "sk-upstream-env-3d7b1f-secret",
}
LITERAL_SECRET = "sk-literal-backup-8c2e4a-secret"      # written into the file itself
SECRETS = [*ENV.values(), LITERAL_SECRET]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_config(port: int, *, aliases: tuple[str, ...] = ("demo",), watch: bool = True,
                admin: bool = True, admin_listen: str | None = None,
                openai_url: str | None = None, chunk_delay_ms: float = 0,
                extra_server: str = "") -> str:
    server = [f"port: {port}", f"watch: {str(watch).lower()}"]
    if admin:
        server.append("admin_api_key: ${ADMIN_KEY}")
    if admin_listen:
        server.append(f"admin_listen: '{admin_listen}'")
    if extra_server:
        server.append(extra_server)
    providers = [
        "  - id: demo\n    type: mock\n"
        f"    chunk_delay_ms: {chunk_delay_ms}\n"
        "    keys: [{id: k1, value: \"${MOCK_KEY}\"}]",
    ]
    models = [f"  - alias: {alias}\n    targets: [{{provider: demo, model: echo}}]" for alias in aliases]
    if openai_url:
        providers.append(
            "  - id: openai\n    type: openai\n"
            f"    base_url: {openai_url}\n"
            "    keys:\n"
            "      - {id: main, value: \"${OPENAI_KEY}\"}\n"
            f"      - {{id: backup, value: {LITERAL_SECRET}, weight: 0}}")
        models.append("  - alias: gpt\n    targets: [{provider: openai, model: gpt-4o-mini}]")
    return "\n".join([
        "version: 1",
        "server:", *[f"  {line}" for line in server],
        "providers:", *providers,
        "models:", *models,
        "keys:",
        "  - {id: team-a, key: \"${TEAM_KEY}\"}",
        "",
    ])


def write_replacing(path: Path, text: str) -> None:
    """How editors and Kubernetes write: a new file renamed over the old one."""
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    os.replace(temp, path)


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    url: str
    admin_url: str
    config_path: Path
    log_path: Path
    http: aiohttp.ClientSession
    clients: list[AsyncOpenAI] = field(default_factory=list)    # closed when the gateway stops

    def openai_client(self, key: str, timeout_s: float = 20) -> AsyncOpenAI:
        """An SDK client of this gateway, closed with it: one left to the garbage collector
        closes on a loop that is gone and logs a traceback into a later test."""
        client = AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0,
                             timeout=timeout_s)
        self.clients.append(client)
        return client

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin_headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {ENV['ADMIN_KEY'] if key is None else key}"}

    async def admin(self, method: str, path: str, *, key: str | None = None,
                    data: bytes | None = None) -> tuple[int, Any, str]:
        async with self.http.request(method, self.admin_url + path, data=data,
                                     headers=self.admin_headers(key)) as response:
            text = await response.text()
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                body = None
            return response.status, body, text

    async def get(self, path: str, base: str | None = None) -> tuple[int, str]:
        async with self.http.get((base or self.url) + path) as response:
            return response.status, await response.text()

    async def status(self) -> dict[str, Any]:
        code, body, _ = await self.admin("GET", "/admin/v1/status")
        assert code == 200, body
        result: dict[str, Any] = body
        return result

    async def model_ids(self) -> set[str]:
        async with self.http.get(self.url + "/v1/models",
                                 headers={"Authorization": f"Bearer {ENV['TEAM_KEY']}"}) as response:
            body = orjson.loads(await response.read())
            return {entry["id"] for entry in body["data"]}

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str,
                     limit_s: float = WAIT_LIMIT_S) -> None:
    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(poll(), limit_s)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for: {what}") from None


@asynccontextmanager
async def run_gateway(config_path: Path, port: int, *, admin_port: int | None = None,
                      env: Mapping[str, str] | None = None) -> AsyncIterator[Gateway]:
    log_path = config_path.with_name("gateway.log")
    full_env = {**os.environ, **ENV, **(env or {}), "PYTHONPATH": str(WORKTREE)}
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "truckllm", "serve", "-c", str(config_path),
            stdout=log, stderr=log, env=full_env, cwd=str(config_path.parent))
    url = f"http://127.0.0.1:{port}"
    admin_url = f"http://127.0.0.1:{admin_port}" if admin_port else url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_LIMIT_S)) as http:
        gateway = Gateway(process, url, admin_url, config_path, log_path, http)
        try:
            async def healthy() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"truckllm exited early:\n{gateway.output()}")
                try:
                    code, _ = await gateway.get("/health")
                except aiohttp.ClientError:
                    return False
                return code == 200
            await wait_until(healthy, "the gateway to answer /health", START_LIMIT_S)
            yield gateway
        finally:
            for client in gateway.clients:
                await client.close()
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_LIMIT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
