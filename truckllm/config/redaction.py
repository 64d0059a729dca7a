"""The config as the admin API shows it and takes it back, without revealing a secret.

GET shows each secret as the `${VAR}` reference it was written as, else `"***"`; a POSTed
config that sends back what GET showed (or `"***"`) for a secret keeps the current value.
Secrets are the schema's SecretStr fields plus header values with credential-like names.
List items are matched by `id`/`alias` (then position), so reordering keeps secrets.
Pure: no I/O, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import yaml
from pydantic import SecretStr

from truckllm.config.loader import ConfigError, ConfigIssue, LoadedConfig, PathTuple, format_path
from truckllm.config.size import TOO_DEEP, TooLarge, check_data, check_text

REDACTED = "***"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CREDENTIAL_HEADER = re.compile(r"(?i)auth|key|token|secret|passw|cookie|signature")

IdentityPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecretSpot:
    written: str        # as written in the file: a ${VAR} reference or the literal value
    shown: str          # what GET /admin/v1/config shows for it


def redacted_config(loaded: LoadedConfig) -> dict[str, Any]:
    """The running config as JSON-ready data, every secret replaced by its reference or ***."""
    shown, _ = _redact(loaded)
    return shown


def merge_posted(posted: Any, current: LoadedConfig) -> Any:
    """The POSTed document with every kept secret ("***" or as GET showed it) restored."""
    _, spots = _redact(current)
    issues: list[ConfigIssue] = []
    merged = _restore(posted, (), (), spots, issues)
    if issues:
        raise ConfigError(issues)
    return merged


def parse_posted(body: bytes) -> dict[str, Any]:
    """A POSTed config body, JSON or YAML, as plain data."""
    try:
        text = body.decode("utf-8")
        if text.lstrip().startswith("{"):
            data = orjson.loads(body)
        else:
            check_text(text)
            data = yaml.safe_load(text)
        check_data(data)            # aliases are shared objects here: merging would walk each
    except (UnicodeDecodeError, orjson.JSONDecodeError, yaml.YAMLError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([ConfigIssue("", f"the body is not valid JSON or YAML: {problem}")]) from None
    except TooLarge as exc:
        raise ConfigError([ConfigIssue("", str(exc))]) from None
    except RecursionError:          # the YAML parser recurses per nesting level
        raise ConfigError([ConfigIssue("", TOO_DEEP)]) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "the body must be a config object (a mapping)")])
    return data


def to_yaml(document: Any) -> bytes:
    """The config file text written for a POSTed config.

    The same document always gives the same bytes (no timestamp: the file's mtime has it),
    so POSTing the running config again is recognised as no change.
    """
    header = "# Written by POST /admin/v1/config; the previous file is kept as .bak\n"
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return (header + body).encode()


def _redact(loaded: LoadedConfig) -> tuple[dict[str, Any], dict[IdentityPath, SecretSpot]]:
    spots: dict[IdentityPath, SecretSpot] = {}
    data = loaded.config.model_dump(mode="python", exclude_unset=True)
    shown = _show(data, (), (), loaded.env_refs, spots)
    return shown, spots


def _show(node: Any, path: PathTuple, identity: IdentityPath, env_refs: Mapping[str, str],
          spots: dict[IdentityPath, SecretSpot]) -> Any:
    reference = env_refs.get(format_path(path))
    if isinstance(node, SecretStr) or (_is_credential_header(path) and isinstance(node, str)):
        value = node.get_secret_value() if isinstance(node, SecretStr) else node
        spot = SecretSpot(written=reference if reference is not None else value,
                          shown=_shown_reference(reference))
        spots[identity] = spot
        return spot.shown
    if isinstance(node, dict):
        return {key: _show(value, (*path, key), (*identity, str(key)), env_refs, spots)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_show(item, (*path, i), (*identity, _identity(item, i)), env_refs, spots)
                for i, item in enumerate(node)]
    if isinstance(node, datetime):
        return node.isoformat()
    if isinstance(node, str) and reference is not None:
        return reference            # shown as written: the reference, not what it resolved to
    return node


def _shown_reference(reference: str | None) -> str:
    """A secret's `${VAR}` reference, when it is nothing but references without literal defaults."""
    if reference is None or _ENV_REF.sub("", reference).strip():
        return REDACTED
    return _ENV_REF.sub(lambda m: f"${{{m.group(1)}:-{REDACTED}}}" if m.group(2) else m.group(0),
                        reference)


def _restore(node: Any, path: PathTuple, identity: IdentityPath,
             spots: Mapping[IdentityPath, SecretSpot], issues: list[ConfigIssue]) -> Any:
    if isinstance(node, dict):
        return {key: _restore(value, (*path, key), (*identity, str(key)), spots, issues)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_restore(item, (*path, i), (*identity, _identity(item, i)), spots, issues)
                for i, item in enumerate(node)]
    if not isinstance(node, str):
        return node
    spot = spots.get(identity)
    if spot is not None and node in (REDACTED, spot.shown):
        return spot.written
    if node == REDACTED:
        issues.append(ConfigIssue(format_path(path), "'***' keeps a current secret, "
                                  "but the running config has none here"))
    return node


def _identity(item: Any, index: int) -> str:
    if isinstance(item, dict):
        for name in ("id", "alias"):
            if isinstance(item.get(name), str):
                return f"{name}={item[name]}"
    return f"#{index}"


def _is_credential_header(path: PathTuple) -> bool:
    return len(path) >= 2 and path[-2] == "headers" and isinstance(path[-1], str) \
        and _CREDENTIAL_HEADER.search(path[-1]) is not None


def secret_values(loaded: LoadedConfig) -> list[str]:
    """Every resolved secret of a config: what logs must never show."""
    found: list[str] = []

    def collect(node: Any, path: PathTuple) -> None:
        if isinstance(node, SecretStr):
            found.append(node.get_secret_value())
        elif isinstance(node, str) and _is_credential_header(path):
            found.append(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                collect(value, (*path, key))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                collect(item, (*path, i))

    collect(loaded.config.model_dump(mode="python"), ())
    for value in list(found):
        if value.startswith("sha256:"):
            found.remove(value)         # a digest is not the key; harmless to show
    return [value for value in found if value]
