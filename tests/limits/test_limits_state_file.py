"""Spend that survives restarts: a real `truckllm serve` process stopped with SIGTERM and
started again; a corrupt state file gives a warning and a fresh start, never a refusal."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from structlog.testing import capture_logs

from tests.limits.gateway import make_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0

CONFIG = """\
version: 1
server: {{port: {port}, log_level: warning}}
providers:
  - {{id: demo, type: mock}}
models:
  - alias: demo-chat
    targets: [{{provider: demo, model: mock-1}}]
    pricing: {{input_per_mtok: 100000, output_per_mtok: 100000}}
keys:
  - {{id: team-a, key: key-a, budget_usd: 1, budget_period: monthly}}
  - {{id: team-b, key: key-b}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def make_serve_process(config: Path, port: int) -> AsyncIterator[str]:
    """`truckllm serve` from this checkout; yields its /v1 URL; SIGTERM on exit, exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "truckllm", "serve", "-c", str(config), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await _wait_healthy(port, process)
        yield f"http://127.0.0.1:{port}/v1"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_healthy(port: int, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while loop.time() < deadline:
            assert process.returncode is None, "truckllm serve exited during start-up"
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("truckllm serve did not become healthy in time")


async def spend(url: str, key: str) -> None:
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10) as client:
        await client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "spend some money"}])


async def test_spend_survives_a_process_restart(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port))
    async with make_serve_process(config, port) as url:
        await spend(url, "key-a")                              # way over a $1 budget
        with pytest.raises(openai.PermissionDeniedError):
            await spend(url, "key-a")
    saved = orjson.loads((tmp_path / "gateway.state.json").read_bytes())
    assert saved["client_keys"]["team-a"]["period"]["spend_usd"] > 1
    async with make_serve_process(config, port) as url:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await spend(url, "key-a")                          # still over budget
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "budget_exceeded"
        await spend(url, "key-b")                              # other keys are unaffected


CORRUPT_CONFIG = """\
version: 1
server: {state_file: usage/state.json}
providers:
  - {id: demo, type: mock}
models:
  - alias: demo-chat
    targets: [{provider: demo, model: mock-1}]
    pricing: {input_per_mtok: 1, output_per_mtok: 1}
keys:
  - {id: team-a, key: key-a, budget_usd: 10}
"""


async def test_a_corrupt_state_file_warns_and_starts_fresh(tmp_path: Path) -> None:
    state_file = tmp_path / "usage" / "state.json"
    state_file.parent.mkdir()
    state_file.write_bytes(b'{"version": 1, "client_keys": {"team-a": "garbage"')
    with capture_logs() as logs:
        async with make_gateway(CORRUPT_CONFIG, tmp_path) as gateway:
            await spend(gateway.url, "key-a")                  # serves at once
    assert "state_file_corrupt" in [entry["event"] for entry in logs]
    assert state_file.with_name("state.json.corrupt").exists()
    saved = orjson.loads(state_file.read_bytes())              # saved on shutdown, fresh
    assert saved["client_keys"]["team-a"]["period"]["requests"] == 1
