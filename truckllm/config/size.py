"""Bounds on how large and how deep a config may be once YAML aliases are expanded.

A few lines of YAML anchors and aliases can stand for billions of values, or for a list
that contains itself; walking either would hang the process or blow the stack. These
checks count what a document stands for, visiting each shared part once, before anything
walks it. Pure; knows nothing about the config schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any

import yaml

MAX_VALUES = 100_000    # a real config has hundreds of values
MAX_DEPTH = 64          # and nests about six levels deep
_MAX_BRACKETS = 4 * MAX_DEPTH
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
TOO_MANY = f"the config stands for more than {MAX_VALUES} values (YAML aliases?)"
TOO_DEEP = f"the config nests deeper than {MAX_DEPTH} levels, or contains itself"


class TooLarge(ValueError):
    """The document breaks a bound; the message says which."""


def check_text(text: str) -> None:
    """Before YAML parsing: PyYAML's scanner slows down with the square of flow nesting
    (`[[[[...`) and its composer recurses per level. Brackets inside quoted strings count
    too, which only matters for text no config has (hundreds of unclosed brackets)."""
    brackets = _NOT_A_BRACKET.sub("", text)
    if len(brackets) <= _MAX_BRACKETS:
        return
    deepest = max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)))
    if deepest > _MAX_BRACKETS:
        raise TooLarge(TOO_DEEP)


def check_node(node: yaml.Node) -> None:
    """A composed YAML document (aliases are shared nodes)."""
    _Measure(_node_children).size(node, 0)


def check_data(data: Any) -> None:
    """Parsed data (JSON, or YAML whose aliases became shared objects)."""
    _Measure(_data_children).size(data, 0)


def _node_children(node: Any) -> Iterable[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return ()


def _data_children(value: Any) -> Iterable[Any]:
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, dict):
        return [part for pair in value.items() for part in pair]
    return ()


class _Measure:
    def __init__(self, children: Callable[[Any], Iterable[Any]]) -> None:
        self._children = children
        self._known: dict[int, tuple[int, int]] = {}    # id -> (values, height)
        self._open: set[int] = set()                    # on the current path: a cycle

    def size(self, item: Any, depth: int) -> tuple[int, int]:
        key = id(item)
        known = self._known.get(key)
        if known is None:
            if key in self._open or depth > MAX_DEPTH:
                raise TooLarge(TOO_DEEP)
            self._open.add(key)
            values, height = 1, 0
            for child in self._children(item):
                child_values, child_height = self.size(child, depth + 1)
                values += child_values
                height = max(height, child_height + 1)
                if values > MAX_VALUES:
                    raise TooLarge(TOO_MANY)
            self._open.discard(key)
            known = self._known[key] = (values, height)
        if depth + known[1] > MAX_DEPTH:
            raise TooLarge(TOO_DEEP)
        return known
