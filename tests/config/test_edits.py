"""Round-trip edits of the config text: only the one key entry changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from truckllm.config.edits import EditError, add_key, locate, remove_key, update_key
from truckllm.config.loader import load_bytes

EXAMPLE = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_bytes()
ENTRY = {"id": "ci", "key": "sha256:" + "a" * 64, "models": ["demo"], "rpm": 5}


def test_adding_a_key_keeps_the_rest_of_the_file_byte_for_byte() -> None:
    edited = add_key(EXAMPLE, ENTRY)
    assert edited.startswith(EXAMPLE)
    assert edited[len(EXAMPLE):].decode() == (
        "  - id: ci\n    key: sha256:" + "a" * 64 + "\n    models: [demo]\n    rpm: 5\n")
    loaded = load_bytes(edited, "config.yaml", {})
    assert [key.id for key in loaded.config.keys or []] == ["dev", "demo-only", "ci"]
    assert remove_key(edited, "ci") == EXAMPLE


def test_changing_a_key_touches_only_its_fields() -> None:
    edited = update_key(EXAMPLE, "dev", {"rpm": 10, "budget_usd": None, "tpm": 500})
    before, after = EXAMPLE.decode().splitlines(), edited.decode().splitlines()
    changed = [line for line in after if line not in before]
    gone = [line for line in before if line not in after]
    assert [line.split("#")[0].strip() for line in changed] == ["rpm: 10", "tpm: 500"]
    assert [line.split("#")[0].strip() for line in gone] == ["rpm: 600", "budget_usd: 25"]
    assert "${TRUCKLLM_DEV_KEY:-tk-dev-change-me}" in edited.decode()


def test_a_first_key_creates_the_list() -> None:
    raw = b"version: 1  # mine\nproviders: []\n"
    assert add_key(raw, {"id": "a", "key": "sha256:" + "b" * 64}) == (
        b"version: 1  # mine\nproviders: []\nkeys:\n- id: a\n  key: sha256:" + b"b" * 64 + b"\n")


def test_unknown_and_taken_ids_and_unreadable_files() -> None:
    with pytest.raises(EditError) as taken:
        add_key(EXAMPLE, {**ENTRY, "id": "dev"})
    assert taken.value.status == 409
    for edit in (lambda: update_key(EXAMPLE, "nobody", {"rpm": 1}),
                 lambda: remove_key(EXAMPLE, "nobody")):
        with pytest.raises(EditError) as unknown:
            edit()
        assert unknown.value.status == 404
    with pytest.raises(EditError) as broken:
        add_key(b"keys: [sk-literal-secret-in-a-broken-file\n", ENTRY)
    assert broken.value.status == 400 and "sk-literal" not in str(broken.value)


def test_paths_are_located_in_the_text() -> None:
    lines = EXAMPLE.decode().splitlines()
    (line, column), missing, top = locate(EXAMPLE, ["models[1].targets[0].provider",
                                                    "keys[0].tpm", ""])
    assert lines[line - 1][column - 1:].startswith("provider: openai")
    assert missing is not None and lines[missing[0] - 1].strip().startswith("- id: dev")
    assert top is None
    assert locate(b"{not: [yaml", ["a"]) == [None]
