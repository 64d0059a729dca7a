"""Config loading: every problem found, each with its path and file:line:col; documents
too large or too deep (YAML alias bombs, self reference, deep nesting) refused; secrets and
header values that must be header text; merge keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from truckllm.config.loader import ConfigError, load_bytes, load_file
from truckllm.config.redaction import parse_posted
from truckllm.config.schema import Config
from truckllm.config.starter import STARTER_CONFIG
from truckllm.runtime.state import build_state

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
version: 1
providers:
  - id: demo
    type: mock
  - id: oa
    type: openai
    keys: [{id: k, value: "${OPENAI_KEY:-sk-default}"}]
models:
  - alias: demo
    targets: [{provider: demo, model: m}]
keys:
  - {id: team, key: tk-1, models: ["demo*"]}
"""

# (what to change in BASE, expected path, expected message fragment, expected line:col)
CASES = [
    (("    type: mock\n", "    type: mock\n    colour: red\n"), "providers[0].colour", "unknown field", "5:5"),
    (("version: 1\n", "version: 1\nservr: {}\n"), "servr", "unknown field", "2:1"),
    (("version: 1\n", "version: 1\nserver: {port: high}\n"), "server.port", "integer", "2:16"),
    (("type: openai", "type: opnai"), "providers[1]", "unknown provider type 'opnai'", "5:5"),
    (("{provider: demo, model: m}", "{provider: demo, model: m}, {provider: opnai, model: x}"),
     "models[0].targets[1].provider", "unknown provider 'opnai'", "10:54"),
    (("  - alias: demo\n", "  - alias: demo\n    targets: [{provider: demo, model: m}]\n  - alias: demo\n"),
     "models[1].alias", "duplicate alias 'demo'", "11:12"),
    (("  - id: oa\n", "  - id: demo\n"), "providers[1].id", "duplicate provider id", "5:9"),
    (('${OPENAI_KEY:-sk-default}', '${OPENAI_KEY}'), "providers[1].keys[0].value", "environment variable OPENAI_KEY is not set", "7:27"),
    (('models: ["demo*"]', 'models: ["demo[0"]'), "keys[0].models", "unclosed '['", "12:35"),
    (("key: tk-1", "key: sha256:abc"), "keys[0].key", "64 hex digits", "12:21"),
    (("    keys: [{id: k, value: \"${OPENAI_KEY:-sk-default}\"}]\n", ""), "providers[1].keys", "required field is missing", "5:5"),
    (("version: 1", "version: 2"), "version", "1", "1:10"),
    (("providers:", "providers: ["), "", "YAML syntax error", ""),
]


@pytest.mark.parametrize(("change", "path", "fragment", "position"), CASES, ids=[c[1] or c[2] for c in CASES])
def test_each_problem_names_its_path_and_position(change: tuple[str, str], path: str, fragment: str, position: str) -> None:
    source = BASE.replace(*change, 1)
    assert source != BASE
    with pytest.raises(ConfigError) as raised:
        load_bytes(source.encode(), "config.yaml", {})
    issue = next((i for i in raised.value.issues if i.path == path), None)
    assert issue is not None, [str(i) for i in raised.value.issues]
    assert fragment in issue.message
    if position:
        assert issue.location == f"config.yaml:{position}"
        assert str(issue).startswith(f"config.yaml:{position} {path}: ")


@pytest.mark.parametrize(("text", "message", "position"), [
    ("version: 1\nserver:\n\tport: 8080\n", "found character '\\t' that cannot start any token", "3:1"),
    ("version: 1\nproviders: [\n", "expected the node content, but found '<stream end>'", "3:1"),
    ("version: 1\nx: \"a\x07b\"\n", "character #x0007: special characters are not allowed", "2:6"),
])
def test_yaml_syntax_errors_read_as_pyyaml_words_them(text: str, message: str, position: str) -> None:
    """Configs are parsed by libyaml; one it refuses is parsed again by PyYAML's own
    parser for the message, which names a tab a tab (libyaml: "a character"). A character
    YAML does not allow is a syntax error with its position too, not an exception."""
    with pytest.raises(ConfigError) as raised:
        load_bytes(text.encode(), "config.yaml", {})
    [issue] = raised.value.issues
    assert issue.message == f"YAML syntax error: {message}"
    assert issue.location == f"config.yaml:{position}"


def test_every_problem_is_reported_not_just_the_first() -> None:
    source = BASE.replace("type: mock", "type: mock\n    colour: red").replace("{provider: demo", "{provider: nope", 1)
    source = source.replace("version: 1", "version: 1\nservr: {}")
    with pytest.raises(ConfigError) as raised:
        load_bytes(source.encode(), "config.yaml", {})
    assert {i.path for i in raised.value.issues} >= {"servr", "providers[0].colour"}


def test_environment_variables_and_defaults_are_resolved() -> None:
    loaded = load_bytes(BASE.encode(), "config.yaml", {})
    assert loaded.config.providers[1].keys[0].value.get_secret_value() == "sk-default"
    loaded = load_bytes(BASE.encode(), "config.yaml", {"OPENAI_KEY": "sk-from-env"})
    assert loaded.config.providers[1].keys[0].value.get_secret_value() == "sk-from-env"
    assert loaded.env_refs["providers[1].keys[0].value"] == "${OPENAI_KEY:-sk-default}"
    assert "sk-from-env" not in repr(loaded.config)


def test_an_empty_allow_list_allows_nothing() -> None:
    loaded = load_bytes(BASE.replace('["demo*"]', "[]").encode(), "config.yaml", {})
    key = next(iter(build_state(loaded, 1).client_keys.values()))  # type: ignore[union-attr]
    assert not key.may_use("demo")


def test_the_example_and_starter_configs_are_valid_without_environment() -> None:
    load_file(ROOT / "config.example.yaml", env={})
    load_bytes(STARTER_CONFIG.encode(), "starter.yaml", {})


def _field_names(model: type, seen: set[type] | None = None) -> set[str]:
    """Every field name in the schema, descending into nested models."""
    from typing import get_args

    from pydantic import BaseModel
    seen = seen if seen is not None else set()
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        assert info.description, f"{model.__name__}.{name} has no description"
        names.add(name)
        stack = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names |= _field_names(annotation, seen)
            stack.extend(get_args(annotation))
    return names


def test_docs_name_and_describe_every_config_field() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", reference))
    missing = _field_names(Config) - documented
    assert not missing, f"docs/configuration.md does not name: {sorted(missing)}"


MINIMAL = b"""version: 1
providers: [{id: demo, type: mock}]
models: [{alias: demo, targets: [{provider: demo, model: echo}]}]
"""


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


SEVEN_MISTAKES = """\
version: 1
server:
  log_fromat: json
  port: high
providers:
  - id: demo
    type: mock
  - id: oa
    type: openai
    keys: [{id: k, value: "${UNSET_OPENAI_KEY}"}]
  - id: broken
    type: azure
models:
  - alias: demo
    targets: [{provider: dmeo, model: m}]
  - alias: gpt
    targets: [{provider: broken, model: gpt-4o}]
    stratgy: fallback
keys:
  - {id: team, key: "${EMPTY_TEAM_KEY}"}
"""


def test_schema_cross_reference_and_environment_problems_come_in_one_run() -> None:
    with pytest.raises(ConfigError) as raised:
        load_bytes(SEVEN_MISTAKES.encode(), "config.yaml", {"EMPTY_TEAM_KEY": ""})
    lines = [str(issue) for issue in raised.value.issues]
    assert lines == [
        "config.yaml:3:3 server.log_fromat: unknown field (did you mean `log_format`?)",
        "config.yaml:4:9 server.port: Input should be a valid integer, unable to parse string as an integer",
        "config.yaml:10:27 providers[1].keys[0].value: environment variable UNSET_OPENAI_KEY is not set",
        "config.yaml:11:5 providers[2].base_url: required field is missing",
        "config.yaml:11:5 providers[2].keys: required field is missing",
        "config.yaml:15:26 models[0].targets[0].provider: unknown provider 'dmeo' (did you mean `demo`?)",
        "config.yaml:18:5 models[1].stratgy: unknown field (did you mean `strategy`?)",
        "config.yaml:20:21 keys[0].key: environment variable EMPTY_TEAM_KEY is set but empty; a key is needed here",
    ]


def test_a_variable_set_but_empty_is_an_error_only_where_a_key_is_needed() -> None:
    source = BASE.replace("${OPENAI_KEY:-sk-default}", "${OPENAI_KEY}")
    with pytest.raises(ConfigError) as raised:
        load_bytes(source.encode(), "config.yaml", {"OPENAI_KEY": ""})
    assert [str(i) for i in raised.value.issues] == [
        "config.yaml:7:27 providers[1].keys[0].value: environment variable OPENAI_KEY is set but empty; a key is needed here"]
    # `${VAR:-}` says empty is fine, and an empty admin key turns the admin API off
    allowed = BASE.replace("${OPENAI_KEY:-sk-default}", "${OPENAI_KEY:-}").replace(
        "version: 1\n", "version: 1\nserver: {admin_api_key: '${ADMIN}'}\n")
    load_bytes(allowed.encode(), "config.yaml", {"OPENAI_KEY": "", "ADMIN": ""})


def test_a_far_miss_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as raised:
        load_bytes(BASE.replace("version: 1\n", "version: 1\nzzz: 1\n").encode(), "config.yaml", {})
    assert [i.message for i in raised.value.issues] == ["unknown field"]


def test_near_misses_of_a_provider_type_and_an_alias_get_a_suggestion() -> None:
    source = BASE.replace("type: openai", "type: opnai").replace(
        "targets: [{provider: demo, model: m}]",
        "targets: [{provider: demo, model: m}]\n    fallback_on_context_overflow: dem")
    with pytest.raises(ConfigError) as raised:
        load_bytes(source.encode(), "config.yaml", {})
    messages = [issue.message for issue in raised.value.issues]
    assert any(m.startswith("unknown provider type 'opnai' (did you mean `openai`?)") for m in messages)
    assert "unknown alias 'dem' (did you mean `demo`?)" in messages
