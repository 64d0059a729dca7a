"""Spend that survives restarts: a real `truckllm serve` process stopped with SIGTERM and
started again; a corrupt state file gives a warning and a fresh start, never a refusal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import orjson
import pytest
from structlog.testing import capture_logs

from tests.fakes.openai_fake import make_openai_fake
from tests.harness import ADMIN_KEY, free_port, make_gateway, run_serve_process

pytestmark = pytest.mark.slow     # mostly waits: runs first (tests/conftest.py)

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


@asynccontextmanager
async def serving(config: Path, port: int, *, crash: bool = False) -> AsyncIterator[str]:
    """`truckllm serve` on `config`; yields its /v1 URL; SIGTERM on exit, exit 0 (or, with
    `crash`, SIGKILL: no shutdown code runs at all)."""
    async with run_serve_process(config, port) as served:
        yield served.url
        code = await served.stopped(signal.SIGKILL if crash else signal.SIGTERM)
        assert code == (-signal.SIGKILL if crash else 0), served.output()


async def spend(url: str, key: str) -> None:
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10) as client:
        await client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "spend some money"}])


async def test_spend_survives_a_process_restart(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port))
    async with serving(config, port) as url:
        await spend(url, "key-a")                              # way over a $1 budget
        with pytest.raises(openai.PermissionDeniedError):
            await spend(url, "key-a")
    saved = orjson.loads((tmp_path / "gateway.state.json").read_bytes())
    assert saved["client_keys"]["team-a"]["period"]["spend_usd"] > 1
    async with serving(config, port) as url:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await spend(url, "key-a")                          # still over budget
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "budget_exceeded"
        await spend(url, "key-b")                              # other keys are unaffected


async def saved_spend(state_file: Path, key_id: str) -> float:
    """The key's period spend once the periodic save has written it (bounded wait)."""
    for _ in range(300):                                       # at most ~15 s; saves every 5 s
        if state_file.exists():
            saved = orjson.loads(state_file.read_bytes())
            spent: float = saved["client_keys"].get(key_id, {}).get("period", {}).get("spend_usd", 0)
            if spent:
                return spent
        await asyncio.sleep(0.05)
    raise AssertionError("the state file was not saved within its interval")


@pytest.mark.slow(seconds=7)
async def test_a_crash_loses_at_most_the_last_interval(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port))
    state_file = tmp_path / "gateway.state.json"
    async with serving(config, port, crash=True) as url:
        await spend(url, "key-a")
        assert await saved_spend(state_file, "team-a") > 1    # the periodic save, not shutdown
    async with serving(config, port) as url:       # after SIGKILL
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await spend(url, "key-a")
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "budget_exceeded"


async def test_temp_files_left_by_a_crash_mid_save_are_removed(tmp_path: Path) -> None:
    """A process killed while writing the state file leaves its temp file behind; the
    next save removes it (and never a temp file of a process still running)."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port))
    state_file = tmp_path / "gateway.state.json"
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()                                          # a pid that no longer runs
    orphan = tmp_path / f".gateway.state.json.{dead.pid}.0badf00d.tmp"
    orphan.write_text('{"half": ')
    live = tmp_path / f".gateway.state.json.{os.getpid()}.0c0ffee0.tmp"
    live.write_text('{"being written": ')
    async with serving(config, port) as url:
        await spend(url, "key-a")
    # The save at shutdown is the next save: no need to wait for a periodic one.
    await saved_spend(state_file, "team-a")
    assert not orphan.exists()
    assert live.exists()


UPSTREAM_CONFIG = """\
version: 1
server: {{admin_api_key: {admin}}}
providers:
  - {{id: up, type: openai, base_url: "{url}", keys: [{{id: k1, value: sk-up-1}}]}}
models:
  - alias: demo-chat
    targets: [{{provider: up, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}
keys:
  - {{id: team-a, key: key-a}}
"""


async def test_upstream_key_usage_and_spend_survive_a_restart(tmp_path: Path) -> None:
    async with make_openai_fake() as fake:
        config = UPSTREAM_CONFIG.format(admin=ADMIN_KEY, url=fake.url)
        async with make_gateway(config, directory=tmp_path) as gateway:
            await spend(gateway.url, "key-a")
            _, before = await gateway.admin("GET", "/admin/v1/providers")
        saved = orjson.loads((tmp_path / "config.state.json").read_bytes())
        assert saved["upstream_keys"]["up/k1"]["requests"] == 1
        async with make_gateway(config, directory=tmp_path) as gateway:  # started again
            _, after = await gateway.admin("GET", "/admin/v1/providers")
            _, keys = await gateway.admin("GET", "/admin/v1/keys")
        [old], [new] = before["providers"][0]["keys"], after["providers"][0]["keys"]
        assert old["lifetime"]["requests"] == 1 and old["lifetime"]["tokens"] > 0
        assert new["lifetime"] == old["lifetime"] and new["spend_usd"] == old["spend_usd"] > 0
        assert new["usage_req"] == 0                           # since start, by design
        assert keys["keys"][0]["lifetime"]["spend_usd"] == old["spend_usd"]


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
        async with make_gateway(CORRUPT_CONFIG, directory=tmp_path) as gateway:
            await spend(gateway.url, "key-a")                  # serves at once
    assert "state_file_corrupt" in [entry["event"] for entry in logs]
    assert state_file.with_name("state.json.corrupt").exists()
    saved = orjson.loads(state_file.read_bytes())              # saved on shutdown, fresh
    assert saved["client_keys"]["team-a"]["period"]["requests"] == 1


async def test_a_stream_in_flight_at_sigterm_finishes_and_its_spend_is_saved(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port).replace(
        "{id: demo, type: mock}", "{id: demo, type: mock, chunk_delay_ms: 50}").replace(
        "log_level: warning", "log_level: warning, shutdown_grace_s: 10"))
    async with run_serve_process(config, port) as served:
        async with openai.AsyncOpenAI(base_url=served.url, api_key="key-a", max_retries=0,
                                      timeout=10) as client:
            stream = await client.chat.completions.create(
                model="demo-chat", stream=True, messages=[{"role": "user", "content": "spend a lot"}])
            await stream.__anext__()
            served.signal(signal.SIGTERM)                      # mid-stream
            rest = [chunk async for chunk in stream]           # the stream drains
        assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "stop"
        # Waits for the exit the first SIGTERM began (a second one would end the process at
        # once, and on a busy machine saving the state may not be done yet).
        assert await asyncio.to_thread(served.process.wait, 15) == 0, served.output()
    saved = orjson.loads((tmp_path / "gateway.state.json").read_bytes())
    period = saved["client_keys"]["team-a"]["period"]
    assert period["requests"] == 1 and period["completion_tokens"] > 0 and period["spend_usd"] > 1
