"""Admin config redaction round trip, atomic persistence and the ops config fields."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import orjson
import pytest

from truckllm.config.files import backup_path, write_atomically
from truckllm.config.loader import ConfigError, load_bytes
from truckllm.config.redaction import merge_posted, parse_posted, redacted_config, to_yaml
from truckllm.runtime.reloader import Reloader
from truckllm.runtime.state import State, StateHolder, build_state

ENV = {
    "OPENAI_API_KEY": "sk-live-openai-0123456789",
    "TEAM_A_KEY": "team-a-secret-key-42",
    "ADMIN_KEY": "admin-secret-key-77",
    "BASE": "http://127.0.0.1:9999/v1",
}
LITERAL_SECRETS = ["sk-literal-backup-5555", "team-b-literal-key-66", "hdr-token-value-88"]
CONFIG = f"""
version: 1
server:
  admin_api_key: ${{ADMIN_KEY}}
  admin_listen: 127.0.0.1:8081
  request_log_size: 50
providers:
  - id: openai
    type: openai
    base_url: ${{BASE}}
    headers: {{X-Org-Token: {LITERAL_SECRETS[2]}, X-Team: blue}}
    keys:
      - {{id: main, value: "${{OPENAI_API_KEY}}"}}
      - {{id: backup, value: {LITERAL_SECRETS[0]}}}
      - {{id: fallback, value: "${{UNSET_KEY:-sk-default-secret-999}}"}}
  - id: demo
    type: mock
models:
  - alias: gpt-4o
    targets: [{{provider: openai, model: gpt-4o}}]
  - alias: demo
    targets: [{{provider: demo, model: echo}}]
keys:
  - {{id: team-a, key: "${{TEAM_A_KEY}}"}}
  - {{id: team-b, key: {LITERAL_SECRETS[1]}}}
""".encode()
ALL_SECRETS = [*[v for k, v in ENV.items() if k != "BASE"], *LITERAL_SECRETS, "sk-default-secret-999"]


def test_shown_config_has_references_and_no_secret() -> None:
    loaded = load_bytes(CONFIG, "config.yaml", ENV)
    shown = redacted_config(loaded)
    text = orjson.dumps(shown).decode()
    for secret in ALL_SECRETS:
        assert secret not in text
    openai = shown["providers"][0]
    assert [k["value"] for k in openai["keys"]] == ["${OPENAI_API_KEY}", "***", "${UNSET_KEY:-***}"]
    assert openai["headers"] == {"X-Org-Token": "***", "X-Team": "blue"}
    assert openai["base_url"] == "${BASE}"
    assert shown["server"]["admin_api_key"] == "${ADMIN_KEY}"
    assert [k["key"] for k in shown["keys"]] == ["${TEAM_A_KEY}", "***"]


def test_posting_back_what_get_showed_keeps_every_secret() -> None:
    loaded = load_bytes(CONFIG, "config.yaml", ENV)
    shown = redacted_config(loaded)
    shown["providers"].reverse()                        # order changes keep secrets by id
    shown["providers"][1]["keys"].reverse()
    shown["models"].append({"alias": "more", "targets": [{"provider": "demo", "model": "x"}]})
    merged = merge_posted(parse_posted(orjson.dumps(shown)), loaded)
    reloaded = load_bytes(to_yaml(merged), "config.yaml", ENV)

    keys = {k.id: k.value.get_secret_value() for k in reloaded.config.providers[1].keys}
    assert keys == {"main": ENV["OPENAI_API_KEY"], "backup": LITERAL_SECRETS[0],
                    "fallback": "sk-default-secret-999"}
    assert reloaded.config.providers[1].headers["X-Org-Token"] == LITERAL_SECRETS[2]
    assert [k.key.get_secret_value() for k in reloaded.config.keys or []] == \
        [ENV["TEAM_A_KEY"], LITERAL_SECRETS[1]]
    assert [m.alias for m in reloaded.config.models] == ["gpt-4o", "demo", "more"]
    assert reloaded.env_refs["providers[1].keys[2].value"] == "${OPENAI_API_KEY}"


def test_yaml_body_and_new_secret_values() -> None:
    loaded = load_bytes(CONFIG, "config.yaml", ENV)
    body = b"""version: 1
providers:
  - {id: demo, type: mock}
  - id: openai
    type: openai
    keys: [{id: backup, value: "***"}, {id: new, value: sk-brand-new-1}]
models: [{alias: demo, targets: [{provider: demo, model: echo}]}]
keys: [{id: team-a, key: "***"}]
"""
    merged = merge_posted(parse_posted(body), loaded)
    reloaded = load_bytes(to_yaml(merged), "config.yaml", ENV)
    values = [k.value.get_secret_value() for k in reloaded.config.providers[1].keys]
    assert values == [LITERAL_SECRETS[0], "sk-brand-new-1"]
    assert reloaded.config.keys is not None
    assert reloaded.config.keys[0].key.get_secret_value() == ENV["TEAM_A_KEY"]


def test_stars_where_no_secret_exists_is_an_error_with_its_path() -> None:
    loaded = load_bytes(CONFIG, "config.yaml", ENV)
    body = b'{"version": 1, "keys": [{"id": "team-z", "key": "***"}]}'
    with pytest.raises(ConfigError) as caught:
        merge_posted(parse_posted(body), loaded)
    assert [issue.path for issue in caught.value.issues] == ["keys[0].key"]


@pytest.mark.parametrize("body", [b"{not json", b"- just\n- a list\n", b"\xff\xfe", b"a: [unclosed"])
def test_bad_bodies_are_config_errors(body: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_posted(body)


def test_atomic_write_keeps_backup_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"old: 1\n")
    os.chmod(path, 0o644)
    write_atomically(path, b"new: 2\n")
    assert path.read_bytes() == b"new: 2\n"
    assert backup_path(path).read_bytes() == b"old: 1\n"
    for written in (path, backup_path(path)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    write_atomically(path, b"newer: 3\n")
    assert backup_path(path).read_bytes() == b"new: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "config.yaml.bak"]


def test_atomic_write_through_a_symlink_and_of_a_new_file(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_bytes(b"a: 1\n")
    link = tmp_path / "config.yaml"
    link.symlink_to(real)
    write_atomically(link, b"a: 2\n")
    assert link.is_symlink() and real.read_bytes() == b"a: 2\n"
    fresh = tmp_path / "fresh.yaml"
    write_atomically(fresh, b"b: 1\n")
    assert fresh.read_bytes() == b"b: 1\n" and not backup_path(fresh).exists()


def test_atomic_write_failure_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"old\n")
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced")
        with pytest.raises(OSError):
            write_atomically(path, b"new\n")
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == b"old\n"


def test_atomic_write_failure_leaves_the_file_alone_even_as_root(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"old\n")
    (tmp_path / "config.yaml.bak").mkdir()          # renaming a file over a directory fails
    (tmp_path / "config.yaml.bak" / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        write_atomically(path, b"new\n")
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "config.yaml.bak"]


# -- config fields -------------------------------------------------------------------

MINIMAL = b"""version: 1
providers: [{id: demo, type: mock}]
models: [{alias: demo, targets: [{provider: demo, model: echo}]}]
"""


def test_ops_fields_defaults() -> None:
    server = load_bytes(MINIMAL, "c.yaml", {}).config.server
    assert server.admin_api_key is None
    assert server.metrics is True and server.watch is True
    assert server.admin_listen is None and server.request_log_size == 1000


@pytest.mark.parametrize(("server", "path", "fragment"), [
    ("{admin_api_key: same-key-123}", "server.admin_api_key", "differ from every client key"),
    ("{admin_api_key: hashed-key-1}", "server.admin_api_key", "differ from every client key"),
    ("{admin_api_key: 'sha256:" + "a" * 64 + "'}", "server.admin_api_key", "not its sha256"),
    ("{admin_listen: 'localhost'}", "server.admin_listen", "host:port"),
    ("{admin_listen: ':8081'}", "server.admin_listen", "host:port"),
    ("{admin_listen: 'h:70000'}", "server.admin_listen", "host:port"),
    ("{admin_listen: '127.0.0.1:8080'}", "server.admin_listen", "must differ"),
    ("{host: 0.0.0.0, admin_listen: '127.0.0.1:8080'}", "server.admin_listen", "must differ"),
    ("{request_log_size: -1}", "server.request_log_size", "greater than or equal"),
    ("{watch: maybe}", "server.watch", "boolean"),
])
def test_ops_fields_validation(server: str, path: str, fragment: str) -> None:
    hashed = "sha256:" + hashlib.sha256(b"hashed-key-1").hexdigest()
    raw = MINIMAL + f"server: {server}\nkeys: [{{id: a, key: same-key-123}}, {{id: b, key: '{hashed}'}}]\n".encode()
    with pytest.raises(ConfigError) as caught:
        load_bytes(raw, "c.yaml", {})
    found = [issue for issue in caught.value.issues if issue.path == path]
    assert found and fragment in found[0].message, caught.value.issues
    assert "same-key-123" not in str(caught.value) and "hashed-key-1" not in str(caught.value)


@pytest.mark.parametrize("listen", ["127.0.0.1:8081", "[::1]:8081", "localhost:9000"])
def test_admin_listen_accepts_host_port(listen: str) -> None:
    raw = MINIMAL + f"server: {{admin_listen: '{listen}', admin_api_key: ''}}\n".encode()
    assert load_bytes(raw, "c.yaml", {}).config.server.admin_listen == listen


async def test_posting_the_running_config_again_changes_nothing(tmp_path: Path) -> None:
    """The written file depends only on the config (no time stamp in it), so POSTing what
    runs is no change however much later it comes (a stamp once made a live test flaky)."""
    path = tmp_path / "config.yaml"
    path.write_bytes(CONFIG)
    loaded = load_bytes(CONFIG, str(path), ENV)
    holder = StateHolder(build_state(loaded, 1))
    reloader = Reloader[State](path, loaded, holder, build_state, env=ENV)
    first = await reloader.apply_posted(CONFIG)
    assert first.ok and first.changed and first.version == 2
    written = path.read_bytes()
    assert not re.search(rb"\d{4}-\d{2}-\d{2}", written.partition(b"\n")[0])   # no date in the header
    again = await reloader.apply_posted(written)
    assert again.ok and not again.changed and again.version == 2
    assert path.read_bytes() == written


# -- documents too large or too deep (YAML alias bombs, self reference, deep nesting) ----

LAUGHS = b"version: 1\n" + b"".join(
    f"l{n}: &l{n} [{', '.join([f'*l{n - 1}' if n else 'ha'] * 9)}]\n".encode() for n in range(9))
HOSTILE = {
    "aliases": (LAUGHS, "more than 100000 values"),
    "self reference": (b"version: 1\nproviders: &p [*p]\n", "contains itself"),
    "deep flow": (b"version: 1\nmodels: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests deeper"),
    "deep block": (b"version: 1\nmodels:\n  " + b"- " * 5000 + b"x\n", "nests deeper"),
    "deep json": (b'{"version": 1, "models": ' + b"[" * 900 + b"]" * 900 + b"}", "nests deeper"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_documents_are_config_errors(name: str) -> None:
    body, fragment = HOSTILE[name]
    with pytest.raises(ConfigError) as posted:
        parse_posted(body)
    assert fragment in str(posted.value)
    if not body.startswith(b"{"):
        with pytest.raises(ConfigError) as loaded:
            load_bytes(body, "c.yaml", {})
        assert fragment in str(loaded.value)


def test_shared_parts_within_the_bounds_still_load() -> None:
    raw = MINIMAL + b"keys: [{id: a, key: key-a-1234, models: &m [demo]}, {id: b, key: key-b-1234, models: *m}]\n"
    config = load_bytes(raw, "c.yaml", {}).config
    assert [key.models for key in config.keys or []] == [["demo"], ["demo"]]


@pytest.mark.parametrize("value", ['"line\\nbreak-1234"', '"\\udc80surrogate-1234"', '"nul\\0-1234"'])
@pytest.mark.parametrize("where", ["admin", "client", "upstream", "header"])
def test_keys_and_header_values_must_be_header_text(where: str, value: str) -> None:
    fields = {"admin": "admin-key-1234", "client": "client-key-1234", "upstream": "up-key-1234",
              "header": "header-value"}
    fields[where] = value
    raw = f"""version: 1
server: {{admin_api_key: {fields['admin']}}}
providers: [{{id: demo, type: mock, headers: {{X-A: {fields['header']}}}, keys: [{{id: k, value: {fields['upstream']}}}]}}]
models: [{{alias: d, targets: [{{provider: demo, model: e}}]}}]
keys: [{{id: a, key: {fields['client']}}}]
""".encode()
    with pytest.raises(ConfigError) as caught:
        load_bytes(raw, "c.yaml", {})
    paths = {"admin": "server.admin_api_key", "client": "keys[0].key",
             "upstream": "providers[0].keys[0].value", "header": "providers[0].headers.X-A"}
    [issue] = caught.value.issues
    assert issue.path == paths[where] and "line breaks" in issue.message
    assert "1234" not in str(caught.value)


def test_merge_keys_may_be_overridden_but_written_keys_not_twice() -> None:
    raw = b"""version: 1
providers:
  - &base {type: mock, id: a, chunk_delay_ms: 5}
  - {<<: *base, id: b}
models: [{alias: m, targets: &t [{provider: a, model: x}]}, {alias: n, targets: *t}]
"""
    config = load_bytes(raw, "c.yaml", {}).config
    assert [(p.id, p.chunk_delay_ms) for p in config.providers] == [("a", 5.0), ("b", 5.0)]
    with pytest.raises(ConfigError) as caught:
        load_bytes(raw.replace(b"id: b}", b"id: b, id: c}"), "c.yaml", {})
    assert [(i.path, i.message, i.location) for i in caught.value.issues] == [
        ("providers[1].id", "duplicate key", "c.yaml:4:24")]


def test_a_list_as_a_mapping_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_bytes(b"version: 1\n? [a, b]\n: 1\n", "c.yaml", {})
    assert "a key must be a plain value" in [issue.message for issue in caught.value.issues]
