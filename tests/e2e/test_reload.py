"""Reloading a running `truckllm serve`: file watch (and `server.watch` switched by a reload,
a Kubernetes ConfigMap swap), SIGHUP, admin reload, runtime state kept for ids that stay,
settings that follow the config, and the proof that no request is lost across 50 reloads
under streaming and non-streaming load."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.harness import (
    SECRETS,
    SERVE_ENV,
    ServeProcess,
    client_for,
    free_port,
    provider_keys,
    run_serve_process,
    serve_config,
    wait_until,
    write_replacing,
)

pytestmark = pytest.mark.slow     # mostly waits: runs first (tests/conftest.py)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


async def wait_for_models(gateway: ServeProcess, expected: set[str]) -> None:
    async def check() -> bool:
        return await gateway.model_ids() == expected
    await wait_until(check, f"models to become {sorted(expected)}")


async def wait_for_reload_count(gateway: ServeProcess, result: str, count: int) -> str:
    async def check() -> bool:
        _, text = await gateway.get("/metrics")
        return metric(text, "truckllm_config_reloads_total", result=result) >= count
    await wait_until(check, f"{count} reload(s) with result {result}")
    return (await gateway.get("/metrics"))[1]


async def test_file_watch_edit_rename_invalid_and_revert(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    first = serve_config(port)
    path.write_text(first)
    async with run_serve_process(path, port) as gateway:
        assert await gateway.model_ids() == {"demo"}

        second = serve_config(port, aliases=("demo", "extra"))
        path.write_text(second)                                    # edit in place
        await wait_for_models(gateway, {"demo", "extra"})

        write_replacing(path, serve_config(port, aliases=("demo", "renamed")))   # rename-replace
        await wait_for_models(gateway, {"demo", "renamed"})

        write_replacing(path, "version: 1\nproviders: [{id: demo, type: mock}]\nmodels:\n"
                        "  - alias: broken\n    targets: [{provider: nowhere, model: x}]\n")
        text = await wait_for_reload_count(gateway, "error", 1)
        assert await gateway.model_ids() == {"demo", "renamed"}     # still the last good one
        assert metric(text, "truckllm_config_version") == 3
        status = await gateway.status()
        assert status["last_reload"]["result"] == "error"
        [issue] = status["last_reload"]["errors"]
        assert issue["path"] == "models[0].targets[0].provider"
        assert issue["location"].endswith("config.yaml:5:26")

        write_replacing(path, first)                                # revert
        await wait_for_models(gateway, {"demo"})
        text = await wait_for_reload_count(gateway, "success", 3)
        assert metric(text, "truckllm_config_version") == 4
        status = await gateway.status()
        assert status["config"]["version"] == 4 and status["last_reload"]["result"] == "success"

        output = gateway.output()
        reloaded = [orjson.loads(line) for line in output.splitlines()
                    if '"config reloaded"' in line]
        assert reloaded[0]["aliases"] == {"added": ["extra"], "removed": [], "changed": []}
        assert reloaded[1]["aliases"]["removed"] == ["extra"]
        assert "config reload failed" in output and "unknown provider 'nowhere'" in output


async def test_a_burst_of_writes_is_one_reload(tmp_path: Path) -> None:
    """An editor saving in several writes (truncate, a half-written file, the rest, a
    chmod), a few milliseconds apart, must give one reload of the finished file, not a
    failed reload of the half: the watcher waits for the writes to stop."""
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port))
    async with run_serve_process(path, port) as gateway:
        finished = serve_config(port, aliases=("demo", "saved")).encode()
        half = len(finished) // 2
        with path.open("r+b") as file:
            file.truncate(0)
            file.flush()
            await asyncio.sleep(0.02)
            file.write(finished[:half])      # cut mid-line: not a valid config on its own
            file.flush()
            await asyncio.sleep(0.02)
            file.write(finished[half:])
        await asyncio.sleep(0.02)
        path.chmod(0o644)
        await wait_for_models(gateway, {"demo", "saved"})
        await asyncio.sleep(1.0)             # > debounce: any second reload has happened
        _, text = await gateway.get("/metrics")
        assert metric(text, "truckllm_config_reloads_total", result="success") == 1
        assert metric(text, "truckllm_config_reloads_total", result="error") == 0
        assert (await gateway.status())["config"]["version"] == 2


async def test_sighup_reloads_and_same_bytes_do_nothing(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False))
    async with run_serve_process(path, port) as gateway:
        gateway.signal(signal.SIGHUP)                       # same bytes: nothing happens
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["reloaded"] is False and body["unchanged"] is True
        assert (await gateway.status())["config"]["version"] == 1

        path.write_text(serve_config(port, aliases=("demo", "after-hup"), watch=False))
        gateway.signal(signal.SIGHUP)
        await wait_for_models(gateway, {"demo", "after-hup"})
        status = await gateway.status()
        assert status["last_reload"]["trigger"] == "sighup"
        assert status["config"]["version"] == 2
        _, text = await gateway.get("/metrics")
        assert metric(text, "truckllm_config_reloads_total", result="success") == 1
        assert metric(text, "truckllm_config_reloads_total", result="error") == 0


async def test_log_settings_apply_on_reload(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False))
    async with run_serve_process(path, port) as gateway:
        path.write_text(serve_config(port, watch=False, extra_server="log_level: warning"))
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["changes"]["server"] == ["log_level"], body
        headers = {"Authorization": f"Bearer {SERVE_ENV['TEAM_KEY']}", "X-Request-ID": "quiet-one"}
        async with gateway.http.post(gateway.root + "/v1/chat/completions", headers=headers,
                                     json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status == 200
        headers["X-Request-ID"] = "loud-one"
        async with gateway.http.post(gateway.root + "/v1/chat/completions", headers=headers,
                                     json={"model": "missing", "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status == 404

        path.write_text(serve_config(port, watch=False, extra_server="log_format: console"))
        code, _, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200
        headers["X-Request-ID"] = "console-one"
        async with gateway.http.post(gateway.root + "/v1/chat/completions", headers=headers,
                                     json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status == 200

        async def logged() -> bool:
            return "console-one" in gateway.output()
        await wait_until(logged, "the console access line")
        lines = gateway.output().splitlines()
        assert any('"loud-one"' in line and line.startswith("{") for line in lines)
        assert not any("quiet-one" in line for line in lines)
        [console] = [line for line in lines if "console-one" in line]
        assert not console.startswith("{") and "request" in console


async def test_listener_changes_are_reported_as_needing_a_restart(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False))
    async with run_serve_process(path, port) as gateway:
        path.write_text(serve_config(port + 1, aliases=("demo", "also"), watch=False))
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["reloaded"] is True and body["version"] == 2
        assert body["needs_restart"] == ["server.port"]
        assert await gateway.model_ids() == {"demo", "also"}       # the rest applied
        assert (await gateway.status())["needs_restart"] == ["server.port"]
        assert "need a restart" in gateway.output()

        # Back to the port it listens on: nothing needs a restart any more.
        path.write_text(serve_config(port, aliases=("demo", "back"), watch=False))
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["reloaded"] is True
        assert body["needs_restart"] == []
        assert (await gateway.status())["needs_restart"] == []
        assert gateway.output().count("need a restart") == 1


async def test_putting_the_file_back_after_a_failed_reload_clears_the_failure(
        tmp_path: Path) -> None:
    """The documented alert (last reload failed) goes green again once the file holds the
    running config again, though nothing is reloaded."""
    port = free_port()
    path = tmp_path / "config.yaml"
    good = serve_config(port, watch=False)
    path.write_text(good)
    async with run_serve_process(path, port) as gateway:
        path.write_text("version: 1\nproviders: []\n")
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code != 200 or body.get("ok") is False
        _, text = await gateway.get("/metrics")
        assert metric(text, "truckllm_config_last_reload_success") == 0
        assert (await gateway.status())["last_reload"]["result"] == "error"

        path.write_text(good)
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["unchanged"] is True and body["reloaded"] is False
        _, text = await gateway.get("/metrics")
        assert metric(text, "truckllm_config_last_reload_success") == 1
        status = await gateway.status()
        assert status["last_reload"]["result"] == "success"
        assert status["last_reload"]["errors"] == []
        assert status["config"]["version"] == 1


ROUNDS = 50
WORKERS = 6


@pytest.mark.slow(seconds=3)
async def test_fifty_reloads_under_load_lose_no_request(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, chunk_delay_ms=10))
    async with run_serve_process(path, port) as gateway:
        client = gateway.openai_client(SERVE_ENV["TEAM_KEY"], timeout_s=30)
        done = asyncio.Event()
        answered: list[str] = []

        async def non_streaming(worker: int) -> None:
            n = 0
            while not done.is_set():
                text = f"plain {worker} {n}"
                reply = await client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": text}])
                assert reply.choices[0].message.content == f"You said: {text}"
                assert reply.choices[0].finish_reason == "stop"
                answered.append("plain")
                n += 1

        async def streaming(worker: int) -> None:
            n = 0
            while not done.is_set():
                text = f"stream {worker} {n} with several words to make several chunks"
                stream = await client.chat.completions.create(
                    model="demo", stream=True, stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": text}])
                pieces, finishes, usages = [], [], 0
                async for chunk in stream:
                    if chunk.usage is not None:
                        usages += 1
                    for choice in chunk.choices:
                        pieces.append(choice.delta.content or "")
                        if choice.finish_reason:
                            finishes.append(choice.finish_reason)
                assert "".join(pieces) == f"You said: {text}"
                assert finishes == ["stop"] and usages == 1
                answered.append("stream")
                n += 1

        async def reload_many() -> None:
            try:
                for round_ in range(ROUNDS):
                    valid = round_ % 2 == 0
                    text = (serve_config(port, aliases=("demo", f"v{round_}"), watch=False,
                                        chunk_delay_ms=8 + round_ % 3) if valid
                            else f"version: 1\nproviders: []\n# broken {round_}\n")
                    write_replacing(path, text)
                    code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
                    assert (code == 200) == valid, body
                    assert body["reloaded"] is valid
                    await asyncio.sleep(0.02)       # let requests start on each snapshot
            finally:
                done.set()

        loads = [non_streaming(i) for i in range(WORKERS // 2)] + \
                [streaming(i) for i in range(WORKERS // 2)]
        await asyncio.wait_for(asyncio.gather(reload_many(), *loads), 120)
        await client.close()

        assert answered.count("plain") >= WORKERS // 2 and answered.count("stream") >= WORKERS // 2
        _, text = await gateway.get("/metrics")
        assert metric(text, "truckllm_config_reloads_total", result="success") == ROUNDS // 2
        assert metric(text, "truckllm_config_reloads_total", result="error") == ROUNDS // 2
        assert metric(text, "truckllm_config_version") == 1 + ROUNDS // 2
        served = sum(metric(text, "llm_requests_total", provider="demo", model="demo", status=s)
                     for s in ("200",))
        assert served == len(answered)
        for code in ("400", "404", "499", "500", "502", "503"):
            with pytest.raises(AssertionError):
                metric(text, "llm_requests_total", provider="demo", model="demo", status=code)
        output = gateway.output()
        for secret in SECRETS:
            assert secret not in output


WATCH_SETTLE_S = 1.5        # several watcher debounce periods: a running watcher would have fired


@pytest.mark.slow(seconds=5)
async def test_reload_turns_the_file_watcher_on_and_off(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False))
    async with run_serve_process(path, port) as gateway:
        path.write_text(serve_config(port, aliases=("demo", "unseen"), watch=False))
        await asyncio.sleep(WATCH_SETTLE_S)
        assert await gateway.model_ids() == {"demo"}           # watch off: the edit waits
        assert (await gateway.status())["config"]["watching"] is False

        write_replacing(path, serve_config(port, aliases=("demo", "watched"), watch=True))
        gateway.signal(signal.SIGHUP)                           # turns the watcher on
        await wait_until(lambda: _watching(gateway, True), "the watcher to start")
        assert await gateway.model_ids() == {"demo", "watched"}

        write_replacing(path, serve_config(port, aliases=("demo", "by-file"), watch=True))
        await wait_until(lambda: _has_models(gateway, {"demo", "by-file"}), "the file edit")
        assert (await gateway.status())["last_reload"]["trigger"] == "file"

        write_replacing(path, serve_config(port, aliases=("demo", "last-watched"), watch=False))
        await wait_until(lambda: _has_models(gateway, {"demo", "last-watched"}),
                         "the edit that turns watching off")
        assert (await gateway.status())["config"]["watching"] is False
        version = (await gateway.status())["config"]["version"]

        write_replacing(path, serve_config(port, aliases=("demo", "ignored"), watch=False))
        await asyncio.sleep(WATCH_SETTLE_S)
        assert await gateway.model_ids() == {"demo", "last-watched"}
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["reloaded"] is True and body["version"] == version + 1


async def _watching(gateway: ServeProcess, wanted: bool) -> bool:
    return bool((await gateway.status())["config"]["watching"] is wanted)


async def _has_models(gateway: ServeProcess, wanted: set[str]) -> bool:
    return await gateway.model_ids() == wanted


async def test_runtime_state_survives_a_real_reload_for_ids_that_stay(
        tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        fake.script(Scripted(status=429, headers={"Retry-After": "600"}))
        reply = await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}])
        assert reply.choices[0].message.content                 # answered by the backup key
        await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "y"}])
        before = await provider_keys(gateway)
        assert before["openai/main"]["cooldown_until"] is not None
        assert (before["openai/main"]["errors"], before["openai/backup"]["usage_req"]) == (1, 1)
        _, keys_before, _ = await gateway.admin("GET", "/admin/v1/keys")

        # The backup key goes away; a new alias comes; main, k1 and team-a stay.
        text = serve_config(port, aliases=("demo", "new"), watch=False, openai_url=fake.url)
        text = "\n".join(line for line in text.splitlines() if "id: backup" not in line) + "\n"
        path.write_text(text)
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["changes"]["upstream_keys"]["removed"] == ["openai/backup"]

        after = await provider_keys(gateway)
        assert set(after) == {"demo/k1", "openai/main"}
        for name in ("usage_req", "errors", "last_error", "cooldown_until"):
            assert after["openai/main"][name] == before["openai/main"][name], name
        assert after["demo/k1"]["usage_req"] == before["demo/k1"]["usage_req"] == 1
        _, keys_after, _ = await gateway.admin("GET", "/admin/v1/keys")
        assert keys_after["keys"][0]["requests"] == keys_before["keys"][0]["requests"] == 2

        # Re-adding the removed key starts it from nothing.
        path.write_text(serve_config(port, watch=False, openai_url=fake.url))
        code, _, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200
        assert (await provider_keys(gateway))["openai/backup"]["usage_req"] == 0
        await client.close()


def _kubernetes_publish(directory: Path, name: str, text: str) -> None:
    """How a ConfigMap volume updates: a new timestamped directory, then `..data` (a
    symlink to it) is replaced by renaming a fresh symlink over it."""
    version = directory / f"..v{len(list(directory.glob('..v*')))}"
    version.mkdir()
    (version / name).write_text(text)
    fresh = directory / "..data_tmp"
    fresh.symlink_to(version.name)
    fresh.replace(directory / "..data")


async def test_file_watch_sees_a_kubernetes_configmap_swap(tmp_path: Path) -> None:
    port = free_port()
    _kubernetes_publish(tmp_path, "config.yaml", serve_config(port))
    path = tmp_path / "config.yaml"
    path.symlink_to("..data/config.yaml")
    async with run_serve_process(path, port) as gateway:
        assert (await gateway.status())["config"]["watching"] is True
        _kubernetes_publish(tmp_path, "config.yaml", serve_config(port, aliases=("demo", "k8s")))
        await wait_until(lambda: _has_models(gateway, {"demo", "k8s"}), "the ConfigMap swap")
        assert (await gateway.status())["last_reload"]["trigger"] == "file"


async def test_request_log_size_and_metrics_switch_follow_the_config(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False,
                                extra_server="request_log_size: 2\n  metrics: false"))
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        for n in range(3):
            await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}],
                extra_headers={"X-Request-ID": f"call-{n}"})
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs")
        assert [entry["request_id"] for entry in body["logs"]] == ["call-2", "call-1"]
        code, text = await gateway.get("/metrics")
        assert code == 404 and orjson.loads(text)["error"]["code"] == "unknown_url"

        path.write_text(serve_config(port, watch=False, extra_server="request_log_size: 1"))
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["reloaded"] is True
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs")
        assert [entry["request_id"] for entry in body["logs"]] == ["call-2"]
        await client.chat.completions.create(        # recorded in the resized log
            model="demo", messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Request-ID": "call-3"})
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs")
        assert [entry["request_id"] for entry in body["logs"]] == ["call-3"]
        code, text = await gateway.get("/metrics")
        assert code == 200 and "llm_requests_total" in text
        await client.close()


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running
