"""Glob patterns for model allow-lists (checked at load, compiled once per config), and
wildcard aliases (`*` anywhere in an alias) with the rule for choosing between them."""

from __future__ import annotations

import fnmatch
import re


def check_glob(pattern: str) -> None:
    """Reject patterns fnmatch would silently read literally (an unclosed `[`)."""
    if not pattern:
        raise ValueError("empty glob pattern")
    depth_open = False
    for index, char in enumerate(pattern):
        if char == "[" and not depth_open:
            depth_open = True
            start = index
        elif char == "]" and depth_open and index > start + 1:
            depth_open = False
    if depth_open:
        raise ValueError(f"glob {pattern!r} has an unclosed '['")


def compile_globs(patterns: list[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")          # an empty allow-list allows nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class AliasPattern:
    """A wildcard alias: one `*` anywhere (`openai/*`, `claude-*`, `*-fast`, `*`) standing
    for at least one character of the model name a client sends."""

    __slots__ = ("alias", "head", "tail")

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.head, _, self.tail = alias.partition("*")

    @property
    def specificity(self) -> int:
        """How many characters it fixes: of two patterns matching a name, the one fixing
        more is the more specific, and wins."""
        return len(self.head) + len(self.tail)

    def match(self, model: str) -> str | None:
        """The part of `model` the `*` stands for, or None when it does not match."""
        if (len(model) > len(self.head) + len(self.tail) and model.startswith(self.head)
                and model.endswith(self.tail)):
            return model[len(self.head):len(model) - len(self.tail)]
        return None


def is_wildcard(alias: str) -> bool:
    return "*" in alias


def by_specificity(patterns: list[AliasPattern]) -> list[AliasPattern]:
    """Most specific first; among equals, config order (the sort is stable)."""
    return sorted(patterns, key=lambda pattern: -pattern.specificity)
