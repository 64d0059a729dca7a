"""Edits of the config file's text that keep what the operator wrote around them.

A client key created, changed or revoked through the admin API is written into the
config file itself, which stays the one source of truth: the YAML is loaded with a
round-trip parser (ruamel.yaml), the one `keys` entry is changed, and the text is dumped
again with its comments, key order, quoting and `${VAR}` references as they were.
Also finds where a config path (`models[1].targets[0].provider`) stands in a YAML
text, so that errors of a posted config point at their line.

Pure functions of bytes; no I/O, no validation of the whole config (the reloader does
that before anything is written). Must not import the server or the runtime.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

# The fields of a client key the admin API may set; `id` and `key` are set at creation.
KEY_FIELDS = ("models", "rpm", "tpm", "max_concurrent", "budget_usd", "budget_period", "expires")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")



class EditError(Exception):
    """The file cannot take the edit: `status` 404 (no such key), 409 (id taken) or 400."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


def add_key(raw: bytes, entry: Mapping[str, Any]) -> bytes:
    """`raw` with a new entry at the end of `keys` (the list is created when missing)."""
    def change(document: CommentedMap) -> None:
        keys = document.get("keys")
        if keys is None:
            keys = document["keys"] = CommentedSeq()
        if not isinstance(keys, list):
            raise EditError(400, "`keys` in the config file is not a list", "invalid_config",
                            "keys")
        if _index_of(keys, str(entry["id"])) is not None:
            raise EditError(409, f"A client key with id {entry['id']!r} exists.", "key_exists",
                            "id")
        keys.append(CommentedMap((name, _node(value)) for name, value in entry.items()))
    return _edit(raw, change)


def update_key(raw: bytes, key_id: str, changes: Mapping[str, Any]) -> bytes:
    """`raw` with the fields in `changes` set on key `key_id` (None removes a field)."""
    def change(document: CommentedMap) -> None:
        keys, index = _find(document, key_id)
        entry = keys[index]
        for name, value in changes.items():
            if value is None:
                entry.pop(name, None)
            else:
                entry[name] = _node(value)
    return _edit(raw, change)


def remove_key(raw: bytes, key_id: str) -> bytes:
    """`raw` without key `key_id`; an emptied list stays (`keys: []`)."""
    def change(document: CommentedMap) -> None:
        keys, index = _find(document, key_id)
        del keys[index]
    return _edit(raw, change)


def locate(text: bytes, paths: Sequence[str]) -> list[tuple[int, int] | None]:
    """For each config path, the (line, column), both from 1, where it stands in the YAML
    `text`: its key or list item, or for a missing field its deepest existing parent.
    None for an empty path, or for all when the text is not YAML. Call it only for a text
    the loader has already parsed and checked (size, depth, aliases)."""
    if not any(paths):
        return [None] * len(paths)
    try:
        document: Any = _yaml().load(text)
    except (YAMLError, ValueError, UnicodeDecodeError, RecursionError):
        return [None] * len(paths)
    return [_locate_one(document, path) for path in paths]


def _locate_one(node: Any, path: str) -> tuple[int, int] | None:
    found: tuple[int, int] | None = None
    for name, index in _PATH_PART.findall(path):
        if isinstance(node, CommentedMap) and name and name in node:
            found = _position(node.lc.key(name))
            node = node[name]
        elif isinstance(node, CommentedSeq) and index and int(index) < len(node):
            found = _position(node.lc.item(int(index)))
            node = node[int(index)]
        else:
            break
    return found


def _node(value: Any) -> Any:
    """A list as the example config writes one: `models: ["gpt-4o", "claude-*"]`."""
    if isinstance(value, list):
        seq = CommentedSeq(value)
        seq.fa.set_flow_style()
        return seq
    return value


def _position(line_col: Any) -> tuple[int, int]:
    line, column = line_col[0], line_col[1]
    return int(line) + 1, int(column) + 1


def _find(document: CommentedMap, key_id: str) -> tuple[CommentedSeq, int]:
    keys = document.get("keys")
    index = _index_of(keys, key_id) if isinstance(keys, list) else None
    if index is None:
        raise EditError(404, f"No client key with id {key_id!r}.", "key_not_found")
    return keys, index


def _index_of(keys: Any, key_id: str) -> int | None:
    for index, entry in enumerate(keys or []):
        if isinstance(entry, Mapping) and str(entry.get("id")) == key_id:
            return index
    return None


def _yaml(indent: int = 2, dash: int = 0) -> YAML:
    """The round-trip parser. `indent` (of a list item's content) and `dash` (of the dash)
    as the file was written, so that the lists the edit does not touch keep their layout."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096               # never re-wrap a long line the operator wrote
    yaml.indent(mapping=max(indent - dash, 2), sequence=indent, offset=dash)
    return yaml


def _edit(raw: bytes, change: Callable[[CommentedMap], None]) -> bytes:
    """Load `raw`, let `change` edit the document in place, dump it as it was laid out."""
    try:
        text = raw.decode("utf-8")
        document, indent, dash = load_yaml_guess_indent(text, yaml=_yaml())
    except (YAMLError, ValueError):
        # (ruamel's message quotes the file's text, which may hold a secret)
        raise EditError(400, "The config file cannot be edited: it is not valid YAML",
                        "invalid_config") from None
    if not isinstance(document, CommentedMap):
        raise EditError(400, "The config file cannot be edited: it is not a mapping",
                        "invalid_config")
    change(document)
    out = io.StringIO()
    _yaml(indent or 2, dash or 0).dump(document, out)
    return out.getvalue().encode("utf-8")
