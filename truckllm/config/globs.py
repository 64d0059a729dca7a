"""Glob patterns for model allow-lists: checked at load, compiled once per config."""

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
