"""Admin config redaction: GET shows ${VAR} references and stars, never a secret; what is
posted back keeps every secret; bad bodies are config errors; posting the running config
again changes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

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


# -- config fields -------------------------------------------------------------------


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


