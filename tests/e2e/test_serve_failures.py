"""Audit of issue 3 against a running `truckllm serve`: failures after a stream started are
counted, each /admin/v1/logs filter, every /admin/v1/status field, a config that cannot be
written (500, nothing applied), `server.watch` switched by reload, runtime state across a
real reload, and metric labels that never carry what a client typed."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.azure_fake import SPEECH
from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.fakes.wire_fake import Reply
from tests.harness import (
    CLIENT_KEY,
    SECRETS,
    SERVE_ENV,
    ServeProcess,
    free_port,
    make_stack,
    run_serve_process,
    serve_config,
    wait_until,
    write_replacing,
)
from truckllm import __version__

WATCH_SETTLE_S = 1.5        # several watcher debounce periods: a running watcher would have fired


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running


def client_for(gateway: ServeProcess, key: str | None = None) -> AsyncOpenAI:
    return gateway.openai_client(key or SERVE_ENV["TEAM_KEY"])


async def metric_samples(gateway: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = await gateway.get("/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def provider_keys(gateway: ServeProcess) -> dict[str, dict[str, object]]:
    code, body, _ = await gateway.admin("GET", "/admin/v1/providers")
    assert code == 200, body
    return {f"{p['id']}/{k['id']}": k for p in body["providers"] for k in p["keys"]}


async def test_a_stream_that_fails_after_its_first_chunk_counts_as_an_upstream_error(
        tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        fake.script(Scripted(drop_after_chunks=2))
        stream = await client.chat.completions.create(
            model="gpt", stream=True, messages=[{"role": "user", "content": "tell me more"}])
        seen: list[str] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen.extend(choice.delta.content or "" for choice in chunk.choices)
        assert seen                                     # the failure came after output
        await client.close()

        samples = await metric_samples(gateway)
        assert samples[("llm_requests_total",
                        (("model", "gpt"), ("provider", "openai"), ("status", "200")))] == 1
        errors = {labels: value for (name, labels), value in samples.items()
                  if name == "llm_upstream_errors_total"}
        assert errors == {(("key", "main"), ("provider", "openai"), ("reason", "connect")): 1}

        main = (await provider_keys(gateway))["openai/main"]
        assert (main["usage_req"], main["errors"], main["last_error"]) == (1, 1, "connect")
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs")
        assert code == 200
        [entry] = body["logs"]
        assert entry["status"] == 200 and entry["error"] == "connect" and entry["stream"] is True


async def test_audio_that_breaks_off_is_an_incomplete_body_and_an_upstream_error() -> None:
    async with make_stack() as stack:
        stack.azure.script(Reply(events=[SPEECH[:256], SPEECH[256:512], SPEECH[512:]],
                                 drop_after_events=2, path="audio/speech"))
        client = AsyncOpenAI(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, timeout=10)
        received = b""
        with pytest.raises(Exception, match="incomplete"):     # never a short "whole" file
            async with client.audio.speech.with_streaming_response.create(
                    model="az-tts", voice="alloy", input="Hello there") as response:
                async for chunk in response.iter_bytes():
                    received += chunk
        await client.close()
        assert received == SPEECH[:512]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(stack.root + "/metrics") as scraped:
            text = await scraped.text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("llm_upstream_errors_total",
                        (("key", "k1"), ("provider", "az"), ("reason", "connect")))] == 1


async def test_each_log_filter_through_http(tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        for word in ("one", "two"):                                     # 200 demo, 200 demo
            await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": word}])
        await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}])
        fake.script(*[Scripted(status=500)] * 3)                       # 502 gpt
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError):                       # 404, no provider
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        stranger = client_for(gateway, key="not-a-client-key")
        with pytest.raises(openai.AuthenticationError):                 # 401, no key id
            await stranger.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])
        await client.close()
        await stranger.close()

        async def logs(query: str) -> list[tuple[int, str | None]]:
            code, body, _ = await gateway.admin("GET", "/admin/v1/logs" + query)
            assert code == 200, (query, body)
            return [(entry["status"], entry["model"]) for entry in body["logs"]]

        everything = [(401, None), (404, None), (502, "gpt"), (200, "gpt"), (200, "demo"),
                      (200, "demo")]
        assert await logs("") == everything                             # newest first
        assert await logs("?limit=2") == everything[:2]
        assert await logs("?provider=openai") == [(502, "gpt"), (200, "gpt")]
        assert await logs("?provider=demo&limit=1") == [(200, "demo")]
        assert await logs("?model=gpt") == [(502, "gpt"), (200, "gpt")]
        assert await logs("?model=gpt-4o-mini") == [(502, "gpt"), (200, "gpt")]   # upstream model
        assert await logs("?key=team-a") == everything[1:]
        assert await logs("?key=someone-else") == []
        assert await logs("?level=warning") == everything[:3]
        assert await logs("?level=error") == [(502, "gpt")]
        assert await logs("?level=info") == everything
        assert await logs("?status=200") == everything[3:]
        assert await logs("?status=4xx") == everything[:2]
        assert await logs("?status=5xx&provider=openai") == [(502, "gpt")]
        for bad, param in (("limit=0", "limit"), ("limit=many", "limit"), ("level=loud", "level"),
                           ("status=2x", "status"), ("status=600", "status")):
            code, body, _ = await gateway.admin("GET", "/admin/v1/logs?" + bad)
            assert code == 400 and body["error"]["param"] == param, bad


async def test_status_reports_every_field(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, chunk_delay_ms=150))
    async with run_serve_process(path, port) as gateway:
        first = await gateway.status()
        assert first["version"] == __version__
        assert first["config"]["version"] == 1
        assert first["config"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert first["config"]["path"] == str(path) and first["config"]["watching"] is False
        assert first["last_reload"] is None and first["needs_restart"] == []
        assert first["inflight"] == 0 and first["uptime_s"] >= 0
        assert first["started_at"] <= first["config"]["loaded_at"] + 1

        client = client_for(gateway)
        stream = await client.chat.completions.create(
            model="demo", stream=True, messages=[{"role": "user", "content": "a b c d e f"}])
        async for _ in stream:
            assert (await gateway.status())["inflight"] == 1        # the open stream
            break
        await stream.close()
        await client.close()

        async def idle() -> bool:
            return (await gateway.status())["inflight"] == 0
        await wait_until(idle, "the abandoned stream to end")

        path.write_text("version: 1\nproviders: [{id: demo, type: mock}]\nmodels: []\n")
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 400
        failed = await gateway.status()
        assert failed["config"]["version"] == 1
        assert failed["config"]["sha256"] == first["config"]["sha256"]       # still the old one
        assert failed["last_reload"]["result"] == "error"
        assert failed["last_reload"]["trigger"] == "admin"
        assert [e["path"] for e in failed["last_reload"]["errors"]] == ["models"]
        assert failed["last_reload"]["at"] >= first["started_at"]
        assert failed["uptime_s"] >= first["uptime_s"]

        path.write_text(serve_config(port, aliases=("demo", "more"), watch=False))
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200, body
        applied = await gateway.status()
        assert applied["config"]["version"] == 2
        assert applied["config"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert applied["last_reload"]["result"] == "success" and applied["last_reload"]["errors"] == []
        assert applied["config"]["loaded_at"] >= failed["last_reload"]["at"]


async def test_a_config_that_cannot_be_written_is_a_500_and_applies_nothing(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    original = serve_config(port, watch=False)
    path.write_text(original)
    blocker = tmp_path / "config.yaml.bak"       # a directory where the backup must go:
    blocker.mkdir()                              # renaming a file over it fails, even as root
    (blocker / "keep").write_text("x")
    async with run_serve_process(path, port) as gateway:
        posted = serve_config(port, aliases=("demo", "unsaved"), watch=False)
        code, body, text = await gateway.admin("POST", "/admin/v1/config", data=posted.encode())
        assert code == 500, body
        assert body["error"]["type"] == "server_error"
        assert body["error"]["code"] == "config_not_writable"
        assert "cannot write" in body["error"]["message"] and body["reloaded"] is False
        for secret in SECRETS:
            assert secret not in text
        assert path.read_text() == original
        assert await gateway.model_ids() == {"demo"}
        status = await gateway.status()
        assert status["config"]["version"] == 1 and status["last_reload"]["result"] == "error"
        samples = await metric_samples(gateway)
        assert samples[("truckllm_config_reloads_total", (("result", "error"),))] == 1
        assert samples[("truckllm_config_version", ())] == 1


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


async def test_metric_labels_never_carry_what_a_client_sent(tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    raw = ["evil-model-<x>\"", "raw-user-key-5f1d", "raw-request-id-77", "raw-path-segment"]
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model=raw[0], messages=[{"role": "user", "content": "b"}],
                extra_headers={"X-Request-ID": raw[2]})
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve(raw[0])
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model=raw[0], input="c")
        stranger = client_for(gateway, key=raw[1])
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "d"}])
        await stranger.close()
        await client.close()
        headers = {"Authorization": f"Bearer {SERVE_ENV['TEAM_KEY']}", "x-api-key": raw[1]}
        for url, body in ((f"/v1/{raw[3]}", b"{}"), ("/v1/messages",
                          orjson.dumps({"model": raw[0], "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "e"}]}))):
            async with gateway.http.post(gateway.root + url, data=body, headers=headers) as response:
                assert response.status == 404

        code, text = await gateway.get("/metrics")
        assert code == 200
        for value in [*raw, *SECRETS, "evil-model"]:
            assert value not in text
        samples = await metric_samples(gateway)
        allowed = {"model": {"demo", "gpt", ""}, "provider": {"demo", "openai", ""},
                   "key": {"team-a", "main", "backup", "k1", ""}}
        seen: dict[str, set[str]] = {name: set() for name in allowed}
        for _, labels in samples:
            for name, value in labels:
                if name in seen:
                    seen[name].add(value)
        for name, values in seen.items():
            assert values <= allowed[name], (name, values - allowed[name])
        assert samples[("llm_requests_total", (("model", ""), ("provider", ""), ("status", "404")))] >= 4
        assert samples[("llm_requests_total", (("model", ""), ("provider", ""), ("status", "401")))] == 1


LAUGHS = b"version: 1\n" + b"".join(
    f"l{n}: &l{n} [{', '.join([f'*l{n - 1}' if n else 'ha'] * 9)}]\n".encode() for n in range(9))


async def _raw_status(gateway: ServeProcess, request: bytes) -> tuple[int, dict[str, object]]:
    port = gateway.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


async def test_hostile_admin_bodies_and_header_bytes_get_clear_errors(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False))
    async with run_serve_process(path, port) as gateway:
        hostile = [LAUGHS, b"version: 1\nproviders: &p [*p]\n",
                   b"version: 1\nmodels: " + b"[" * 100_000 + b"]" * 100_000]
        for body in hostile:
            for route in ("/admin/v1/config/validate", "/admin/v1/config"):
                code, answer, _ = await gateway.admin("POST", route, data=body)
                assert code in (200, 400) and answer.get("valid") is not True, (route, answer)
                [error] = answer["errors"]
                assert error["path"] == ""
                assert "YAML aliases" in error["message"] or "nests deeper" in error["message"]
        path.write_bytes(LAUGHS)                                   # the file itself, too
        code, answer, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 400 and "more than 100000 values" in answer["errors"][0]["message"]
        assert await gateway.model_ids() == {"demo"}

        for request in (
                b"GET /admin/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                b"Connection: close\r\n\r\n",
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: \xc3\x28\r\nConnection: close\r\n\r\n"):
            code, answer = await _raw_status(gateway, request)
            assert code == 401 and answer["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert "Traceback" not in gateway.output()


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
