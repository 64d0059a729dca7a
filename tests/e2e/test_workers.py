"""`truckllm serve --workers N` as real processes: one port for all workers, a killed
worker comes back, SIGHUP reloads every worker, /metrics adds up every worker's numbers,
SIGTERM drains all and exits 0; limits without state_url are refused."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.harness import REPO_ROOT, SERVE_ENV, free_port, serve_config, wait_until

KEY = SERVE_ENV["TEAM_KEY"]


async def start(config_path: Path, workers: int) -> tuple[asyncio.subprocess.Process, Path]:
    log_path = config_path.with_name("supervisor.log")
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "truckllm", "serve", "-c", str(config_path),
            "--workers", str(workers), stdout=log, stderr=log,
            env={**os.environ, **SERVE_ENV, "PYTHONPATH": str(REPO_ROOT)}, cwd=str(config_path.parent))
    return process, log_path


def events(log_path: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            found.append(entry)
    return found


async def get(url: str, **headers: str) -> tuple[int, str]:
    # a new connection each time, so the kernel may give it to any worker
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(url, headers=headers) as response:
        return response.status, await response.text()


async def chat(url: str) -> int:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        await response.read()
        return response.status


def metric_sum(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


async def test_workers_share_a_port_restart_reload_add_up_and_drain(tmp_path: Path) -> None:
    port = free_port()
    config_path = tmp_path / "truckllm.yaml"
    config_path.write_text(serve_config(port, watch=False))
    url = f"http://127.0.0.1:{port}"
    process, log_path = await start(config_path, 2)
    try:
        async def both_started() -> bool:
            if process.returncode is not None:
                raise AssertionError(log_path.read_text())
            return len(events(log_path, "listening")) == 2
        await wait_until(both_started, "two workers listening", 30)

        statuses = [await chat(url) for _ in range(20)]
        assert statuses == [200] * 20
        code, text = await get(url + "/metrics")
        assert code == 200
        assert metric_sum(text, 'llm_key_requests_total{key="team-a",status="200"}') == 20
        assert "truckllm_config_info{" in text
        code, text = await get(url + "/admin/v1/status",
                               Authorization=f"Bearer {SERVE_ENV['ADMIN_KEY']}")
        workers = orjson.loads(text)["workers"]
        assert code == 200 and sorted(w["worker"] for w in workers) == [0, 1]
        assert len({w["config"]["sha256"] for w in workers}) == 1

        # a worker killed is started again
        victim = int(str(events(log_path, "worker_started")[0]["pid"]))
        os.kill(victim, signal.SIGKILL)

        async def restarted() -> bool:
            return len(events(log_path, "worker_started")) == 3 and \
                len(events(log_path, "listening")) == 3
        await wait_until(restarted, "the killed worker to be started again", 30)
        assert [await chat(url) for _ in range(10)] == [200] * 10

        # SIGHUP reaches every worker: each reloads the file
        config_path.write_text(serve_config(port, watch=False, aliases=("demo", "added")))
        process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return len(events(log_path, "config reloaded")) >= 2
        await wait_until(reloaded, "both workers to reload", 30)
        for _ in range(10):
            code, text = await get(url + "/v1/models", Authorization=f"Bearer {KEY}")
            assert code == 200 and '"added"' in text

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 40) == 0
        assert len(events(log_path, "stopped")) >= 3       # both workers and the supervisor
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_limits_without_state_url_are_refused_with_what_to_set(tmp_path: Path) -> None:
    port = free_port()
    config_path = tmp_path / "truckllm.yaml"
    config_path.write_text(serve_config(port).replace(
        '{id: team-a, key: "${TEAM_KEY}"}', '{id: team-a, key: "${TEAM_KEY}", rpm: 10}'))
    process, log_path = await start(config_path, 2)
    assert await asyncio.wait_for(process.wait(), 30) == 2
    output = log_path.read_text()
    assert "server.state_url" in output and "--workers 2" in output
