"""Client keys through the admin API of a running `truckllm serve`: created, changed and
revoked as edits of the config file on disk (comments, order and ${VAR} references kept,
.bak and mode 0600), applied at once, concurrent creates all kept, bad input named."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from openai import AuthenticationError, PermissionDeniedError

from tests.harness import (
    SECRETS,
    SERVE_ENV,
    ServeProcess,
    free_port,
    make_serve_process,
    run_serve_process,
    serve_config,
    use_serve_process,
)

COMMENTED = "# the team's keys: reviewed in git\n"


def config_text(port: int) -> str:
    text = serve_config(port, watch=False)
    return text.replace("keys:\n", COMMENTED + "keys:\n", 1).replace(
        "version: 1\n", "version: 1   # keep this first\n", 1)


async def post_key(gateway: ServeProcess, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    code, answer, text = await gateway.admin("POST", "/admin/v1/keys", data=orjson.dumps(body))
    for secret in SECRETS:
        assert secret not in text
    return code, answer


async def test_create_use_change_and_revoke_a_key(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    original = config_text(port)
    path.write_text(original)
    async with run_serve_process(path, port) as gateway:
        code, created = await post_key(gateway, {
            "id": "ci-bot", "models": ["demo"], "rpm": 30, "budget_usd": 5,
            "budget_period": "monthly", "expires": "2031-01-01T00:00:00Z"})
        assert code == 201, created
        plaintext = created["key"]
        assert isinstance(plaintext, str) and plaintext.startswith("tk-")
        assert created["id"] == "ci-bot" and created["budget_usd"] == 5
        assert created["limits"]["rpm"] == 30                      # type: ignore[index]

        # The file: the operator's text kept, the new entry at the end with only a hash.
        written = path.read_text()
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        assert written.startswith(original)
        assert plaintext not in written and f"sha256:{digest}" in written
        assert "${TEAM_KEY}" in written and COMMENTED in written
        assert "models: [demo]" in written
        assert path.with_name("config.yaml.bak").read_text() == original
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        # Applied at once: the new key works, and is listed.
        client = gateway.openai_client(plaintext)
        answer = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        code, listed, text = await gateway.admin("GET", "/admin/v1/keys")
        assert code == 200 and plaintext not in text
        assert {key["id"] for key in listed["keys"]} == {"team-a", "ci-bot"}

        # PATCH: limits changed, a field removed (null), the rest of the entry kept.
        code, changed, _ = await gateway.admin("PATCH", "/admin/v1/keys/ci-bot", data=orjson.dumps(
            {"rpm": 60, "models": None, "max_concurrent": 2}))
        assert code == 200, changed
        assert changed["limits"]["rpm"] == 60 and changed["limits"]["max_concurrent"] == 2
        written = path.read_text()
        assert "rpm: 60" in written and "models: [demo]" not in written
        assert f"sha256:{digest}" in written and written.startswith(original)

        # DELETE: revoked at once; the file is back to what the operator wrote.
        code, revoked, _ = await gateway.admin("DELETE", "/admin/v1/keys/ci-bot")
        assert code == 200 and revoked["revoked"] is True
        with pytest.raises(AuthenticationError):
            await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}])
        assert path.read_text() == original
        assert plaintext not in gateway.output()


async def test_expired_and_model_limits_apply_to_a_created_key(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, aliases=("demo", "other")))
    async with run_serve_process(path, port) as gateway:
        code, created = await post_key(gateway, {"id": "only-demo", "models": ["demo"]})
        assert code == 201
        client = gateway.openai_client(str(created["key"]))
        with pytest.raises(PermissionDeniedError):
            await client.chat.completions.create(
                model="other", messages=[{"role": "user", "content": "hi"}])
        code, changed, _ = await gateway.admin("PATCH", "/admin/v1/keys/only-demo",
                                               data=b'{"expires": "2020-01-01T00:00:00Z"}')
        assert code == 200, changed
        with pytest.raises(PermissionDeniedError) as expired:
            await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}])
        assert "expired" in str(expired.value)


async def test_concurrent_creates_are_all_kept(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(port))
    async with run_serve_process(path, port) as gateway:
        ids = [f"worker-{n}" for n in range(12)]
        answers = await asyncio.gather(*(post_key(gateway, {"id": key_id}) for key_id in ids))
        assert [code for code, _ in answers] == [201] * len(ids)
        written = path.read_text()
        for (_, created), key_id in zip(answers, ids, strict=True):
            assert f"id: {key_id}" in written
            digest = hashlib.sha256(str(created["key"]).encode()).hexdigest()
            assert f"sha256:{digest}" in written
        code, listed, _ = await gateway.admin("GET", "/admin/v1/keys")
        assert code == 200
        assert {key["id"] for key in listed["keys"]} == {"team-a", *ids}
        # Creating one id twice at once: exactly one wins.
        twice = await asyncio.gather(*(post_key(gateway, {"id": "dup"}) for _ in range(4)))
        assert sorted(code for code, _ in twice) == [201, 409, 409, 409]
        assert path.read_text().count("id: dup") == 1


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One process for the tests below: every request they make must be refused and change
    nothing (each checks the file), so they can share it."""
    port = free_port()
    path = tmp_path_factory.mktemp("refusing") / "config.yaml"
    path.write_text(config_text(port))
    with make_serve_process(path, port) as running:
        yield running


@pytest.mark.parametrize(("body", "param"), [
    ({"id": "x", "rpm": -1}, "rpm"),
    ({"id": "x", "rpm": "many"}, "rpm"),
    ({"id": "x", "budget_period": "yearly"}, "budget_period"),
    ({"id": "x", "models": ["gpt-[4"]}, "models"),
    ({"id": "x", "expires": "soon"}, "expires"),
    ({"id": "x", "colour": "red"}, "colour"),
    ({"id": "x", "key": "tk-mine"}, "key"),
    ({"id": ""}, "id"),
    ({"id": "has space"}, "id"),
    ({"rpm": 5}, "id"),
])
async def test_bad_input_is_a_400_naming_the_field(refusing: ServeProcess, body: dict[str, object],
                                                  param: str) -> None:
    path = refusing.config_path
    original = config_text(refusing.port)
    async with use_serve_process(refusing) as gateway:
        code, answer = await post_key(gateway, body)
        assert code == 400, answer
        assert answer["error"]["type"] == "invalid_request_error"    # type: ignore[index]
        assert answer["error"]["param"] == param                     # type: ignore[index]
        assert path.read_text() == original


async def test_conflicts_unknown_ids_and_bad_bodies(refusing: ServeProcess) -> None:
    path = refusing.config_path
    original = config_text(refusing.port)
    async with use_serve_process(refusing) as gateway:
        code, answer = await post_key(gateway, {"id": "team-a"})
        assert code == 409 and answer["error"]["code"] == "key_exists"     # type: ignore[index]
        for method in ("PATCH", "DELETE"):
            code, body, _ = await gateway.admin(method, "/admin/v1/keys/nobody",
                                                data=b'{"rpm": 1}')
            assert code == 404 and body["error"]["code"] == "key_not_found", method
        for raw in (b"[1]", b"{not json", b'"id"'):
            code, body, _ = await gateway.admin("POST", "/admin/v1/keys", data=raw)
            assert code == 400 and body["error"]["type"] == "invalid_request_error"
        code, body, _ = await gateway.admin("PATCH", "/admin/v1/keys/team-a", data=b'{"id": "b"}')
        assert code == 400 and body["error"]["param"] == "id"
        code, body, _ = await gateway.admin("PATCH", "/admin/v1/keys/team-a", data=b"{}")
        assert code == 400
        code, body, _ = await gateway.admin("POST", "/admin/v1/keys", data=b'{"id": "x"}',
                                            key="wrong")
        assert code == 401
        assert path.read_text() == original
        assert SERVE_ENV["TEAM_KEY"] not in gateway.output()
