"""The admin API of a running `truckllm serve`: auth, redaction, persistence with .bak,
validation errors with paths, admin_listen, providers and logs after known traffic, each
log filter, every status field, a config that cannot be written, hostile bodies; and no
secret of the config anywhere in any admin response or in the process output."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import orjson
import pytest
from openai import APIStatusError
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.harness import (
    ADMIN_KEY,
    LITERAL_SECRET,
    SECRETS,
    SERVE_ENV,
    ServeProcess,
    client_for,
    free_port,
    make_config,
    make_gateway,
    metric_samples,
    run_serve_process,
    serve_config,
    wait_until,
    write_config,
)
from truckllm import __version__
from truckllm.server.keys import OPS

ADMIN_GETS = ["/admin/v1/config", "/admin/v1/status", "/admin/v1/providers", "/admin/v1/logs",
              "/admin/v1/keys"]


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running




def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked in {where}"


async def test_admin_api_is_404_without_an_admin_key(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, admin=False))
    async with run_serve_process(path, port) as gateway:
        for route in ADMIN_GETS:
            code, body, _ = await gateway.admin("GET", route)
            assert code == 404 and body["error"]["type"] == "not_found_error"
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 404


async def test_admin_auth(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port))
    async with run_serve_process(path, port) as gateway:
        for key in ("", "wrong-admin-key", SERVE_ENV["TEAM_KEY"], SERVE_ENV["ADMIN_KEY"] + "x"):
            for route in ADMIN_GETS:
                code, body, _ = await gateway.admin("GET", route, key=key)
                assert code == 401, (route, key)
                assert body["error"]["type"] == "authentication_error"
        async with gateway.http.get(gateway.root + "/admin/v1/status") as response:
            assert response.status == 401                           # no header at all
        for header in ("x-api-key", "api-key"):                     # the admin API takes Bearer only
            async with gateway.http.get(gateway.root + "/admin/v1/status",
                                        headers={header: SERVE_ENV["ADMIN_KEY"]}) as response:
                assert response.status == 401, header
        for route in ADMIN_GETS:
            code, _, _ = await gateway.admin("GET", route)
            assert code == 200, route
        assert "wrong-admin-key" not in gateway.output()


async def test_redaction_persistence_and_secrets_kept(tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    original = serve_config(port, watch=False, openai_url=fake.url)
    path.write_text(original)
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "a"}])
        assert fake.requests[-1].headers["authorization"] == f"Bearer {SERVE_ENV['OPENAI_KEY']}"

        code, shown, text = await gateway.admin("GET", "/admin/v1/config")
        assert code == 200
        assert_no_secret(text, "GET /admin/v1/config")
        openai = shown["providers"][1]
        assert [k["value"] for k in openai["keys"]] == ["${OPENAI_KEY}", "***"]
        assert shown["server"]["admin_api_key"] == "${ADMIN_KEY}"
        assert shown["keys"][0]["key"] == "${TEAM_KEY}"

        # POST it back with a new alias and the weights swapped: "***" keeps the literal key.
        shown["models"].append({"alias": "posted", "targets": [{"provider": "demo", "model": "echo"}]})
        openai["keys"][0]["weight"], openai["keys"][1]["weight"] = 0, 1
        code, body, text = await gateway.admin("POST", "/admin/v1/config", data=orjson.dumps(shown))
        assert code == 200 and body["reloaded"] is True and body["version"] == 2, body
        assert body["changes"]["aliases"]["added"] == ["posted"]
        assert_no_secret(text, "POST /admin/v1/config")

        written = path.read_text()
        assert "posted" in written and "${OPENAI_KEY}" in written and LITERAL_SECRET in written
        assert path.with_name("config.yaml.bak").read_text() == original
        for file in (path, path.with_name("config.yaml.bak")):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
        await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "b"}])
        assert fake.requests[-1].headers["authorization"] == f"Bearer {LITERAL_SECRET}"
        reply = await client.chat.completions.create(model="posted", messages=[{"role": "user", "content": "c"}])
        assert reply.choices[0].message.content == "You said: c"

        # A YAML body works too; an identical config changes nothing.
        yaml_body = written.encode()
        code, body, _ = await gateway.admin("POST", "/admin/v1/config", data=yaml_body)
        assert code == 200 and body["reloaded"] is False and body["version"] == 2, orjson.dumps(body).decode()
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 200 and body["reloaded"] is False        # the file is what runs
        await client.close()


async def test_invalid_configs_are_refused_with_paths_and_change_nothing(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    original = serve_config(port, watch=False)
    path.write_text(original)
    bad = {"version": 1, "providers": [{"id": "demo", "type": "mock"}],
           "models": [{"alias": "x", "targets": [{"provider": "opnai", "model": "m"}]}],
           "keys": [{"id": "team-a", "key": "***"}], "surprise": 1}
    async with run_serve_process(path, port) as gateway:
        code, body, text = await gateway.admin("POST", "/admin/v1/config/validate", data=orjson.dumps(bad))
        assert code == 200 and body["valid"] is False
        # every problem in one answer: the schema error and the unknown provider together
        assert {e["path"] for e in body["errors"]} == {"surprise", "models[0].targets[0].provider"}
        del bad["surprise"]
        code, body, text = await gateway.admin("POST", "/admin/v1/config/validate", data=orjson.dumps(bad))
        assert [e["path"] for e in body["errors"]] == ["models[0].targets[0].provider"]
        assert "unknown provider 'opnai'" in body["errors"][0]["message"]
        assert_no_secret(text, "validate")

        code, body, text = await gateway.admin("POST", "/admin/v1/config", data=orjson.dumps(bad))
        assert code == 400 and body["reloaded"] is False
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_config"
        assert body["errors"][0]["path"] == "models[0].targets[0].provider"
        assert_no_secret(text, "POST /admin/v1/config (invalid)")
        assert path.read_text() == original and not path.with_name("config.yaml.bak").exists()

        code, body, _ = await gateway.admin("POST", "/admin/v1/config", data=b"{broken json")
        assert code == 400 and body["errors"][0]["path"] == ""
        code, body, _ = await gateway.admin("POST", "/admin/v1/config/validate",
                                            data=orjson.dumps({"version": 1, **{k: v for k, v in bad.items() if k != "version"}, "models": []}))
        assert body["valid"] is False and body["errors"][0]["path"] == "models"

        good = serve_config(port, watch=False, aliases=("demo", "ok"))
        code, body, _ = await gateway.admin("POST", "/admin/v1/config/validate", data=good.encode())
        assert code == 200 and body == {"valid": True}
        assert (await gateway.status())["config"]["version"] == 1    # validate changes nothing
        assert path.read_text() == original


async def test_admin_listen_keeps_admin_and_metrics_off_the_main_port(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, admin_listen=f"127.0.0.1:{admin_port}"))
    async with run_serve_process(path, port, admin_port=admin_port) as gateway:
        admin_url = f"http://127.0.0.1:{admin_port}"
        assert (await gateway.get("/metrics"))[0] == 404
        async with gateway.http.get(gateway.root + "/admin/v1/status",
                                    headers=gateway.admin_headers()) as response:
            assert response.status == 404
        code, text = await gateway.get("/metrics", base=admin_url)
        assert code == 200 and "llm_requests_total" in text
        assert (await gateway.status())["config"]["version"] == 1
        code, body, _ = await gateway.admin("GET", "/admin/v1/nope")
        assert code == 404 and body["error"]["code"] == "unknown_url"
        # The same error envelope as the main listener: OpenAI-shaped, with a request id.
        async with gateway.http.put(admin_url + "/metrics") as response:
            error = (await response.json())["error"]
            assert response.status == 405 and error["code"] == "method_not_allowed"
            assert error["message"] == "Method PUT is not allowed on /metrics."
            assert response.headers["x-request-id"]


async def test_providers_logs_and_metrics_after_known_traffic(tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        for word in ("one", "two"):
            await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": word}])
        await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
        fake.script(*[Scripted(status=500)] * 3)    # every attempt fails (routing.max_attempts)
        with pytest.raises(APIStatusError) as failed:
            await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}])
        assert failed.value.status_code == 502
        with pytest.raises(APIStatusError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        await client.close()

        code, body, text = await gateway.admin("GET", "/admin/v1/providers")
        providers = {p["id"]: p for p in body["providers"]}
        assert providers["demo"]["status"] == "healthy"
        assert providers["demo"]["keys"][0] | {"usage_tokens": 0} == {
            "id": "k1", "usage_req": 2, "usage_tokens": 0, "errors": 0, "status": "healthy",
            "last_error": None, "spend_usd": 0.0, "cooldown_until": None,
            "lifetime": {"requests": 2, "tokens": providers["demo"]["keys"][0]["usage_tokens"],
                         "spend_usd": 0.0}}
        main = providers["openai"]["keys"][0]
        # Attempts: main (500), the weight-0 backup key (500), main again (500).
        assert (main["id"], main["usage_req"], main["errors"], main["last_error"]) == ("main", 3, 2, "500")
        assert main["usage_tokens"] > 0 and main["status"] == "degraded"
        assert providers["openai"]["keys"][1]["errors"] == 1
        # Three server errors in a row opened the gpt-4o-mini target's breaker.
        assert providers["openai"]["status"] == "down"
        assert_no_secret(text, "providers")

        code, body, text = await gateway.admin("GET", "/admin/v1/logs")
        statuses = [entry["status"] for entry in body["logs"]]
        assert statuses == [404, 502, 200, 200, 200]                 # newest first
        assert body["logs"][1]["provider"] == "openai" and body["logs"][1]["level"] == "error"
        for name in ("timestamp", "level", "request_id", "key_id", "provider", "model", "status",
                     "latency_ms", "tokens", "cost_usd"):
            assert name in body["logs"][0]
        assert "one" not in text and "two" not in text                # no prompt text
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs?status=5xx")
        assert [e["status"] for e in body["logs"]] == [502]
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs?provider=demo&limit=1")
        assert [e["model"] for e in body["logs"]] == ["demo"]
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs?level=loud")
        assert code == 400 and body["error"]["param"] == "level"
        for limit in ("²", "٣", "0", "-1", "x"):                   # digits, but not ASCII ones
            code, body, _ = await gateway.admin("GET", f"/admin/v1/logs?limit={limit}")
            assert code == 400 and body["error"]["param"] == "limit", limit
        listing = client_for(gateway)
        assert [m.id async for m in listing.models.list()] == ["demo", "gpt"]
        await listing.close()
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs?limit=1")
        assert body["logs"][0]["key_id"] == "team-a"               # GET /v1/models names its key

        _, text = await gateway.get("/metrics")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("llm_requests_total", (("model", "demo"), ("provider", "demo"), ("status", "200")))] == 2
        assert samples[("llm_requests_total", (("model", "gpt"), ("provider", "openai"), ("status", "502")))] == 1
        assert samples[("llm_requests_total", (("model", ""), ("provider", ""), ("status", "404")))] == 1
        assert samples[("llm_upstream_errors_total", (("key", "main"), ("provider", "openai"), ("reason", "500")))] == 2
        assert samples[("llm_upstream_errors_total", (("key", "backup"), ("provider", "openai"), ("reason", "500")))] == 1
        assert samples[("llm_inflight_requests", ())] == 0
        assert all("nope" not in label for _, labels in samples for label in dict(labels).values())

        for route in ADMIN_GETS:
            _, _, text = await gateway.admin("GET", route)
            assert_no_secret(text, route)
        output = gateway.output()
        assert_no_secret(output, "the process output")
        access = [orjson.loads(line) for line in output.splitlines() if '"event":"request"' in line]
        assert len(access) == 6                                     # five chats, one listing
        assert access[-1]["path"] == "/v1/models" and access[-1]["key_id"] == "team-a"
        assert {"request_id", "key_id", "alias", "provider", "upstream_model", "status",
                "latency_ms", "overhead_ms", "tokens", "attempts"} <= set(access[0])


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


async def test_metrics_count_traffic_from_when_they_are_turned_on(tmp_path: Path) -> None:
    # Only GET /metrics reads the request metrics: while it is off, requests do not feed them.
    config = make_config(server={"log_level": "warning", "metrics": False})
    async with make_gateway(config, directory=tmp_path) as gw:
        await gw.chat("demo")
        async with gw.http() as http:
            async with http.get("/metrics") as response:
                assert response.status == 404
            write_config(tmp_path, {**config, "server": {"log_level": "warning"}})
            result = await gw.app[OPS].reloader.reload("test")
            assert result.ok, result
            for _ in range(2):
                await gw.chat("demo")
            async with http.get("/metrics") as response:
                assert response.status == 200
                text = await response.text()
    requests = [s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "llm_requests_total"]
    assert requests == [2.0]


async def test_the_log_and_history_keep_traffic_from_when_the_admin_api_is_turned_on(
        tmp_path: Path) -> None:
    # Only the admin API reads them: while it is off, requests do not feed them.
    config = make_config()
    async with make_gateway(config, directory=tmp_path) as gw:
        await gw.chat("demo")
        write_config(tmp_path, {**config, "server": {"log_level": "warning",
                                                     "admin_api_key": ADMIN_KEY}})
        result = await gw.app[OPS].reloader.reload("test")
        assert result.ok, result
        for _ in range(2):
            await gw.chat("demo")
        status, body = await gw.admin("GET", "/admin/v1/history")
        logs_status, logs = await gw.admin("GET", "/admin/v1/logs")
    assert status == 200
    assert sum(body["series"]["requests"]) == 2
    assert logs_status == 200 and len(logs["logs"]) == 2
