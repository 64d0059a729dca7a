"""`truckllm serve --workers N` as real processes: one port for all workers, a killed
worker comes back, SIGHUP reloads every worker, /metrics and every admin read answer for
all workers whichever takes the call, admin writes reach every worker, SIGTERM drains
all and exits 0; limits without state_url are refused."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.failing_upstream import make_fixed_upstream
from tests.harness import SERVE_ENV, free_port, serve_config, serve_env, wait_until

pytestmark = pytest.mark.slow     # mostly waits: runs first (tests/conftest.py)

KEY = SERVE_ENV["TEAM_KEY"]


async def start(config_path: Path, workers: int) -> tuple[asyncio.subprocess.Process, Path]:
    log_path = config_path.with_name("supervisor.log")
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "truckllm", "serve", "-c", str(config_path),
            "--workers", str(workers), stdout=log, stderr=log,
            env=serve_env(), cwd=str(config_path.parent))
    return process, log_path


async def workers_listening(process: asyncio.subprocess.Process, log_path: Path,
                            workers: int) -> None:
    """Waits until every worker has said it listens (fails at once if the server exits)."""
    async def all_started() -> bool:
        if process.returncode is not None:
            raise AssertionError(log_path.read_text())
        return len(events(log_path, "listening")) == workers
    await wait_until(all_started, f"{workers} workers listening", 30)


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


@pytest.mark.slow(seconds=4)
async def test_workers_share_a_port_restart_reload_add_up_and_drain(tmp_path: Path) -> None:
    port = free_port()
    config_path = tmp_path / "truckllm.yaml"
    config_path.write_text(serve_config(port, watch=False))
    url = f"http://127.0.0.1:{port}"
    process, log_path = await start(config_path, 2)
    try:
        await workers_listening(process, log_path, 2)

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


ADMIN = {"Authorization": f"Bearer {SERVE_ENV['ADMIN_KEY']}"}
READS = 8       # each on a new connection: with two workers, both answer some of them


async def admin_call(url: str, method: str, path: str, body: object = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.request(method, url + path, json=body, headers=ADMIN) as response:
        return response.status, orjson.loads(await response.read())


async def reads(url: str, path: str) -> list[Any]:
    answers = []
    for _ in range(READS):
        code, body = await admin_call(url, "GET", path)
        assert code == 200, body
        answers.append(body)
    return answers


async def chat_as(url: str, key: str, model: str = "demo") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        await response.read()
        return response.status


@pytest.mark.slow(seconds=4)
async def test_the_admin_api_answers_for_every_worker_and_its_writes_reach_all(
        tmp_path: Path) -> None:
    async with make_fixed_upstream(401) as rejecting:
        port = free_port()
        config_path = tmp_path / "truckllm.yaml"
        config_path.write_text(serve_config(port, watch=False, openai_url=rejecting.url))
        url = f"http://127.0.0.1:{port}"
        process, log_path = await start(config_path, 2)
        try:
            await workers_listening(process, log_path, 2)

            sent = 24
            assert [await chat(url) for _ in range(sent)] == [200] * sent

            # the workers' private listeners answer only each other
            pid = int(str(events(log_path, "worker_started")[0]["pid"]))
            environ = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ")
                           .read_text().split("\0") if "=" in entry)
            private = int((Path(environ["TRUCKLLM_WORKER_DIR"]) / "worker-0.port").read_text())
            for path in ("/logs/self", "/keys/self", "/metrics/self", "/status/self"):
                for token in ({}, {"x-truckllm-worker-token": "guess"}):
                    code, _ = await get(f"http://127.0.0.1:{private}{path}", **token)
                    assert code == 403
            code, _ = await get(f"http://127.0.0.1:{private}/logs/self",
                                **{"x-truckllm-worker-token": environ["TRUCKLLM_WORKER_TOKEN"]})
            assert code == 200

            for body in await reads(url, "/admin/v1/keys"):
                (team,) = [key for key in body["keys"] if key["id"] == "team-a"]
                assert team["requests"] == sent and team["lifetime"]["requests"] == sent
                assert team["tokens"] > 0 and team["current"]["in_flight"] == 0
            for body in await reads(url, "/admin/v1/providers"):
                (demo,) = [p for p in body["providers"] if p["id"] == "demo"]
                assert demo["status"] == "healthy"
                assert [(k["id"], k["usage_req"]) for k in demo["keys"]] == [("k1", sent)]
            for body in await reads(url, "/admin/v1/logs?limit=1000"):
                stamps = [entry["timestamp"] for entry in body["logs"]]
                assert len(stamps) == sent and stamps == sorted(stamps, reverse=True)
                newest = stamps[:5]
            for body in await reads(url, "/admin/v1/logs?limit=5&key=team-a"):
                assert [entry["timestamp"] for entry in body["logs"]] == newest
            for body in await reads(url, "/admin/v1/history"):
                assert sum(body["series"]["requests"]) == sent
                assert list(body["series"]["t"]) == sorted(body["series"]["t"])
            for body in await reads(url, "/admin/v1/status"):
                assert sorted(w["worker"] for w in body["workers"]) == [0, 1]
                assert body["inflight"] == 0

            # one worker's upstream key is rejected: whichever answers shows it down
            assert await chat_as(url, KEY, "gpt") >= 400
            errors_seen = set()
            for body in await reads(url, "/admin/v1/providers"):
                (openai,) = [p for p in body["providers"] if p["id"] == "openai"]
                assert openai["status"] == "down"
                main = next(k for k in openai["keys"] if k["id"] == "main")
                assert main["status"] == "down" and main["errors"] >= 1
                errors_seen.add(sum(k["errors"] for k in openai["keys"]))
            assert len(errors_seen) == 1

            # writes reach every worker though none watches the file
            code, created = await admin_call(url, "POST", "/admin/v1/keys", {"id": "team-b"})
            assert code == 201, created
            assert [await chat_as(url, created["key"]) for _ in range(10)] == [200] * 10
            for body in await reads(url, "/admin/v1/keys"):
                (team_b,) = [key for key in body["keys"] if key["id"] == "team-b"]
                assert team_b["requests"] == 10
            code, changed = await admin_call(url, "PATCH", "/admin/v1/keys/team-b",
                                             {"models": ["demo"]})
            assert code == 200 and changed["requests"] == 10, changed
            code, _ = await admin_call(url, "DELETE", "/admin/v1/keys/team-b")
            assert code == 200
            assert [await chat_as(url, created["key"]) for _ in range(10)] == [401] * 10

            code, reset = await admin_call(url, "POST", "/admin/v1/keys/team-a/reset")
            assert code == 200 and reset["key"]["requests"] == 0, reset
            for body in await reads(url, "/admin/v1/keys"):
                (team,) = [key for key in body["keys"] if key["id"] == "team-a"]
                assert team["requests"] == 0 and team["lifetime"]["requests"] == sent + 1

            posted = serve_config(port, watch=False, openai_url=rejecting.url,
                                  aliases=("demo", "posted"))
            async with aiohttp.ClientSession() as http, http.post(
                    url + "/admin/v1/config", data=posted,
                    headers={**ADMIN, "Content-Type": "application/yaml"}) as response:
                assert response.status == 200, await response.text()
            for _ in range(READS):
                code, text = await get(url + "/v1/models", Authorization=f"Bearer {KEY}")
                assert code == 200 and '"posted"' in text

            config_path.write_text(serve_config(port, watch=False, openai_url=rejecting.url,
                                                aliases=("demo", "reloaded")))
            code, result = await admin_call(url, "POST", "/admin/v1/reload")
            assert code == 200 and result["reloaded"] is True, result
            for _ in range(READS):
                code, text = await get(url + "/v1/models", Authorization=f"Bearer {KEY}")
                assert code == 200 and '"reloaded"' in text and '"posted"' not in text

            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 40) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        # each worker kept its own state file: both served some of the requests
        served = [orjson.loads((tmp_path / f"truckllm.state.worker-{i}.json").read_bytes())
                  ["client_keys"]["team-a"]["lifetime"]["requests"] for i in (0, 1)]
        assert min(served) > 0 and sum(served) == sent + 1


@pytest.mark.slow(seconds=3)
async def test_with_a_state_server_shared_figures_are_counted_once(
        tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    config_path = tmp_path / "truckllm.yaml"
    config_path.write_text(serve_config(port, watch=False, extra_server=f"state_url: {redis_url}")
                           .replace('key: "${TEAM_KEY}"}', 'key: "${TEAM_KEY}", rpm: 1000}'))
    url = f"http://127.0.0.1:{port}"
    process, log_path = await start(config_path, 2)
    try:
        await workers_listening(process, log_path, 2)

        sent = 20
        assert [await chat(url) for _ in range(sent)] == [200] * sent

        async def team() -> dict[str, Any]:
            code, body = await admin_call(url, "GET", "/admin/v1/keys")
            assert code == 200, body
            found: dict[str, Any] = next(k for k in body["keys"] if k["id"] == "team-a")
            return found

        async def all_counted() -> bool:        # the ends of requests reach Redis just after
            return (await team())["requests"] == sent
        await wait_until(all_counted, "every request's end to reach the state server", 10)
        for _ in range(READS):
            report = await team()
            assert report["requests"] == sent and report["lifetime"]["requests"] == sent
            # the key's window is in the state server: once, not once per worker
            assert report["current"]["requests_last_minute"] == sent
        for body in await reads(url, "/admin/v1/providers"):
            (demo,) = [p for p in body["providers"] if p["id"] == "demo"]
            assert [(k["id"], k["usage_req"]) for k in demo["keys"]] == [("k1", sent)]

        code, created = await admin_call(url, "POST", "/admin/v1/keys", {"id": "team-b"})
        assert code == 201, created
        assert [await chat_as(url, created["key"]) for _ in range(10)] == [200] * 10

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 40) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
