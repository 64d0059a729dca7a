"""The admin API of a running `truckllm serve`: auth, redaction, persistence with .bak,
validation errors with paths, admin_listen, providers and logs after known traffic; and
no secret of the config anywhere in any admin response or in the process output."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from openai import APIStatusError, AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.ops.live import (
    ENV,
    LITERAL_SECRET,
    SECRETS,
    Gateway,
    free_port,
    make_config,
    run_gateway,
)

ADMIN_GETS = ["/admin/v1/config", "/admin/v1/status", "/admin/v1/providers", "/admin/v1/logs",
              "/admin/v1/keys"]


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running


def client_for(gateway: Gateway) -> AsyncOpenAI:
    return gateway.openai_client(ENV["TEAM_KEY"])


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked in {where}"


async def test_admin_api_is_404_without_an_admin_key(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(make_config(port, admin=False))
    async with run_gateway(path, port) as gateway:
        for route in ADMIN_GETS:
            code, body, _ = await gateway.admin("GET", route)
            assert code == 404 and body["error"]["type"] == "not_found_error"
        code, body, _ = await gateway.admin("POST", "/admin/v1/reload")
        assert code == 404


async def test_admin_auth(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(make_config(port))
    async with run_gateway(path, port) as gateway:
        for key in ("", "wrong-admin-key", ENV["TEAM_KEY"], ENV["ADMIN_KEY"] + "x"):
            for route in ADMIN_GETS:
                code, body, _ = await gateway.admin("GET", route, key=key)
                assert code == 401, (route, key)
                assert body["error"]["type"] == "authentication_error"
        async with gateway.http.get(gateway.url + "/admin/v1/status") as response:
            assert response.status == 401                           # no header at all
        for header in ("x-api-key", "api-key"):                     # the admin API takes Bearer only
            async with gateway.http.get(gateway.url + "/admin/v1/status",
                                        headers={header: ENV["ADMIN_KEY"]}) as response:
                assert response.status == 401, header
        for route in ADMIN_GETS:
            code, _, _ = await gateway.admin("GET", route)
            assert code == 200, route
        assert "wrong-admin-key" not in gateway.output()


async def test_redaction_persistence_and_secrets_kept(tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    original = make_config(port, watch=False, openai_url=fake.url)
    path.write_text(original)
    async with run_gateway(path, port) as gateway:
        client = client_for(gateway)
        await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "a"}])
        assert fake.requests[-1].headers["authorization"] == f"Bearer {ENV['OPENAI_KEY']}"

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
    original = make_config(port, watch=False)
    path.write_text(original)
    bad = {"version": 1, "providers": [{"id": "demo", "type": "mock"}],
           "models": [{"alias": "x", "targets": [{"provider": "opnai", "model": "m"}]}],
           "keys": [{"id": "team-a", "key": "***"}], "surprise": 1}
    async with run_gateway(path, port) as gateway:
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

        good = make_config(port, watch=False, aliases=("demo", "ok"))
        code, body, _ = await gateway.admin("POST", "/admin/v1/config/validate", data=good.encode())
        assert code == 200 and body == {"valid": True}
        assert (await gateway.status())["config"]["version"] == 1    # validate changes nothing
        assert path.read_text() == original


async def test_admin_listen_keeps_admin_and_metrics_off_the_main_port(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(make_config(port, admin_listen=f"127.0.0.1:{admin_port}"))
    async with run_gateway(path, port, admin_port=admin_port) as gateway:
        admin_url = f"http://127.0.0.1:{admin_port}"
        assert (await gateway.get("/metrics"))[0] == 404
        async with gateway.http.get(gateway.url + "/admin/v1/status",
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
    path.write_text(make_config(port, watch=False, openai_url=fake.url))
    async with run_gateway(path, port) as gateway:
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
