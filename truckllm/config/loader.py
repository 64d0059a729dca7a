"""Config bytes -> YAML nodes -> ${VAR} resolution -> validated Config.

Every problem found is collected (not just the first) as a ConfigIssue carrying its
path (`models[2].targets[0].provider`) and, when it came from a file, `file:line:col`:
unset variables, schema errors and cross-references in one run, in file order. Only a
YAML syntax error stops early. No I/O except reading the file in `load_file`; the
environment is passed in.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from truckllm.config.checks import Parts, cross_check, did_you_mean
from truckllm.config.schema import (
    ClientKeyConfig,
    Config,
    ModelConfig,
    ProviderConfig,
    ServerConfig,
)
from truckllm.config.size import TOO_DEEP, TooLarge, check_node, check_text

PathTuple = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
# libyaml, the C parser PyYAML's wheels carry, reads a config about five times faster
# than PyYAML's own parser (used where a build lacks libyaml); both build the same nodes,
# and the values are constructed by the same Python code (SafeConstructor) either way.
if TYPE_CHECKING:
    _Loader = yaml.SafeLoader | yaml.CSafeLoader
_LIBYAML_LOADER: type[_Loader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    message: str
    location: str | None = None     # "config.yaml:14:7"

    def __str__(self) -> str:
        where = f"{self.location} " if self.location else ""
        return f"{where}{self.path or '(top level)'}: {self.message}"

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "message": self.message, "location": self.location}


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    source: str                     # file path, or a name such as "<admin>"
    raw: bytes
    sha256: str
    env_refs: Mapping[str, str] = field(default_factory=dict)   # path -> "${VAR}" text as written


def format_path(path: PathTuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def load_file(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {file}: {exc.strerror}")]) from None
    return load_bytes(raw, str(file), env)


def load_bytes(raw: bytes, source: str, env: Mapping[str, str] | None = None) -> LoadedConfig:
    env = os.environ if env is None else env
    tree = _YamlTree(source)
    data = tree.parse(raw)
    if data is None and tree.issues:
        raise ConfigError(tree.issues)      # not YAML: nothing more can be read
    resolved = _resolve_env(data, (), env, tree)
    first = [*tree.issues, *_empty_secrets(resolved, tree)]
    config: Config | None = None
    try:
        config = Config.model_validate(resolved)
        parts = Parts.of(config)
        later: list[ConfigIssue] = []
    except ValidationError as exc:
        later = [tree.issue(path, _message(err, path, resolved), at_key=err["type"] == "extra_forbidden")
                 for err in exc.errors() for path in [_error_path(err["loc"], resolved)]]
        parts = _valid_parts(resolved)
    later += [tree.issue(path, message) for path, message in cross_check(parts)]
    claimed = {issue.path for issue in first}   # an unset ${VAR} explains its value's errors
    issues = [*first, *(issue for issue in later if issue.path not in claimed)]
    if issues or config is None:
        raise ConfigError(sorted(issues, key=_file_order))
    return LoadedConfig(config, source, raw, hashlib.sha256(raw).hexdigest(), tree.env_refs)


def _file_order(issue: ConfigIssue) -> tuple[int, int]:
    if issue.location is None:
        return (0, 0)
    _, line, column = issue.location.rsplit(":", 2)
    return (int(line), int(column))


@functools.cache
def _adapters() -> tuple[TypeAdapter[Any], ...]:
    return (TypeAdapter(ServerConfig), TypeAdapter(ProviderConfig), TypeAdapter(ModelConfig),
            TypeAdapter(ClientKeyConfig))


def _valid_parts(data: Any) -> Parts:
    """The sections and list items that pass the schema on their own, for cross-checks
    of a file that has schema errors elsewhere."""
    data = data if isinstance(data, dict) else {}
    server_adapter, provider_adapter, model_adapter, key_adapter = _adapters()

    def valid(adapter: TypeAdapter[Any], value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError:
            return None

    def items(name: str, adapter: TypeAdapter[Any]) -> list[tuple[int, Any]]:
        written = data.get(name)
        if not isinstance(written, list):
            return []
        checked = ((i, valid(adapter, item)) for i, item in enumerate(written))
        return [(i, item) for i, item in checked if item is not None]

    def written(name: str, field_name: str) -> frozenset[str]:
        entries = data.get(name)
        return frozenset(entry[field_name] for entry in entries if isinstance(entry, dict)
                         and isinstance(entry.get(field_name), str)) if isinstance(entries, list) else frozenset()

    server = valid(server_adapter, data.get("server") or {})
    return Parts(server, items("providers", provider_adapter), items("models", model_adapter),
                 items("keys", key_adapter), written("providers", "id"), written("models", "alias"))


def _empty_secrets(data: Any, tree: _YamlTree) -> Iterator[ConfigIssue]:
    """A `${VAR}` set but empty where a key is needed: an upstream key of a real provider,
    or a client key. `${VAR:-}` says empty is fine; an empty admin_api_key means "off"."""
    for path, names in tree.set_but_empty.items():
        if _value_at(data, path) == "" and _needs_secret(data, path):
            yield tree.issue(path, f"environment variable {', '.join(names)} is set but empty; "
                                   "a key is needed here")


def _needs_secret(data: Any, path: PathTuple) -> bool:
    match path:
        case ("keys", int(), "key"):
            return True
        case ("providers", int(index), "keys", int(), "value"):
            provider = _value_at(data, ("providers", index))
            return isinstance(provider, dict) and provider.get("type") != "mock"
    return False


def _value_at(data: Any, path: PathTuple) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _compose(text: str) -> tuple[yaml.Node | None, _Loader]:
    """The document's node tree, and the loader that composed it (to construct values
    with, then dispose of). A text libyaml refuses is parsed again by PyYAML's own parser,
    whose verdict counts: libyaml's messages are terser (a tab is "a character that cannot
    start any token") and can point elsewhere, and what PyYAML accepts stays accepted."""
    fast = _LIBYAML_LOADER(text)
    try:
        return fast.get_single_node(), fast
    except yaml.YAMLError:
        fast.dispose()
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node(), loader
    except BaseException:
        loader.dispose()
        raise


class _YamlTree:
    """YAML parsing that remembers where each value was written."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.marks: dict[PathTuple, yaml.Mark] = {}        # where each value starts
        self.key_marks: dict[PathTuple, yaml.Mark] = {}    # where each mapping key starts
        self.issues: list[ConfigIssue] = []
        self.env_refs: dict[str, str] = {}
        self.set_but_empty: dict[PathTuple, list[str]] = {}    # `${VAR}` (no default), VAR=""
        self._merged: dict[int, int] = {}     # id(mapping node) -> entries that came from `<<`

    def parse(self, raw: bytes) -> Any:
        try:
            text = raw.decode("utf-8")
            check_text(text)
            node, loader = _compose(text)
            try:
                if node is None:
                    return None
                check_node(node)            # before _convert walks every alias
                return self._convert(node, (), loader)
            finally:
                loader.dispose()
        except UnicodeDecodeError:
            self.issues.append(ConfigIssue("", "the file is not UTF-8 text"))
        except TooLarge as exc:
            self.issues.append(ConfigIssue("", str(exc)))
        except RecursionError:              # the YAML composer itself recurses per level
            self.issues.append(ConfigIssue("", TOO_DEEP))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            location = self._location(mark) if mark else None
            self.issues.append(ConfigIssue("", f"YAML syntax error: {exc.problem}", location))
        except yaml.reader.ReaderError as exc:      # a character YAML does not allow
            self.issues.append(ConfigIssue(
                "", f"YAML syntax error: character #x{exc.character:04x}: {exc.reason}",
                self._location_of(text, exc.position)))
        return None

    def _convert(self, node: yaml.Node, path: PathTuple, loader: _Loader) -> Any:
        self.marks[path] = node.start_mark
        if isinstance(node, yaml.MappingNode):
            merged = self._flatten(node, loader)
            result: dict[Any, Any] = {}
            written: set[Any] = set()       # keys given here, not taken from `<<: *base`
            for index, (key_node, value_node) in enumerate(node.value):
                key = loader.construct_object(key_node, deep=True)
                if not _hashable(key):
                    self.issues.append(ConfigIssue(format_path(path), "a key must be a plain value",
                                                   self._location(key_node.start_mark)))
                    continue
                if index >= merged:
                    if key in written:
                        self.issues.append(ConfigIssue(format_path((*path, key)), "duplicate key",
                                                       self._location(key_node.start_mark)))
                    written.add(key)
                self.key_marks[(*path, key)] = key_node.start_mark
                result[key] = self._convert(value_node, (*path, key), loader)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, (*path, i), loader) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    def _flatten(self, node: yaml.MappingNode, loader: _Loader) -> int:
        """Expand `<<` merge keys in place; how many leading entries came from merges
        (remembered per node: an aliased mapping is visited again, already flat)."""
        known = self._merged.get(id(node))
        if known is None:
            explicit = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
            loader.flatten_mapping(node)
            known = self._merged[id(node)] = len(node.value) - explicit
        return known

    def _location(self, mark: yaml.Mark) -> str:
        return f"{self.source}:{mark.line + 1}:{mark.column + 1}"

    def _location_of(self, text: str, position: int) -> str:
        """`file:line:col` of the character at `position` in `text`."""
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return f"{self.source}:{line}:{column}"

    def issue(self, path: PathTuple, message: str, at_key: bool = False) -> ConfigIssue:
        if at_key and path in self.key_marks:
            return ConfigIssue(format_path(path), message, self._location(self.key_marks[path]))
        for depth in range(len(path), -1, -1):      # the nearest written ancestor
            mark = self.marks.get(path[:depth])
            if mark is not None:
                return ConfigIssue(format_path(path), message, self._location(mark))
        return ConfigIssue(format_path(path), message)


def _hashable(key: Any) -> bool:
    """A YAML mapping key can be a list (`? [a, b]`): not usable as a config key."""
    return isinstance(key, Hashable)


def _resolve_env(value: Any, path: PathTuple, env: Mapping[str, str], tree: _YamlTree) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env(v, (*path, k), env, tree) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, (*path, i), env, tree) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            if env[name] == "" and default is None:
                tree.set_but_empty.setdefault(path, []).append(name)
            return env[name]
        if default is not None:
            return default
        tree.issues.append(tree.issue(path, f"environment variable {name} is not set"))
        return ""

    tree.env_refs[format_path(path)] = value
    return _ENV_REF.sub(substitute, value)


def _error_path(loc: tuple[str | int, ...], data: Any) -> PathTuple:
    """Pydantic's location minus the discriminator tags it inserts for tagged unions."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node \
                and node.get("type") == part:
            continue
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(path)


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


def _message(err: Any, path: PathTuple, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden" and path:
        return f"unknown field{did_you_mean(str(path[-1]), _fields_at(path[:-1], data))}"
    if kind in _MESSAGES:
        return str(_MESSAGES[kind])
    if kind == "union_tag_invalid":
        tag, expected = str(err["ctx"]["tag"]), str(err["ctx"]["expected_tags"])
        hint = did_you_mean(tag, re.findall(r"'([^']*)'", expected))
        return f"unknown provider type {tag!r}{hint} (expected {expected})"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _fields_at(path: PathTuple, data: Any) -> list[str]:
    """The field names the schema allows at `path` (for "did you mean")."""
    candidates: list[type[BaseModel]] = [Config]
    node = data
    for part in path:
        if isinstance(part, str):
            model = _pick(candidates, node)
            info = model.model_fields.get(part) if model is not None else None
            if info is None:
                return []
            candidates = _models_in(info.annotation)
        node = _value_at(node, (part,))
    model = _pick(candidates, node)
    return list(model.model_fields) if model is not None else []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _pick(candidates: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    """One model, or the member of a tagged union whose `type` the node names."""
    if len(candidates) == 1:
        return candidates[0]
    kind = node.get("type") if isinstance(node, dict) else None
    for model in candidates:
        info = model.model_fields.get("type")
        if info is not None and kind in get_args(info.annotation):
            return model
    return None
