"""The user docs (README.md, docs/*.md, config.example.yaml) speak to users: no issue
numbers or contract sections they don't have, and every relative link points at a file
that exists (with its heading, when the link names one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER_DOCS = [ROOT / "README.md", ROOT / "config.example.yaml", *sorted((ROOT / "docs").glob("*.md"))]
ALL_DOCS = [*USER_DOCS, *sorted((ROOT / "docs" / "dev").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
ENGINEERING = re.compile(r"SPEC\s*§|§\s*\d|\bissues? #?\d+|issue-\d+|docs/audit", re.IGNORECASE)


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_issue_numbers_or_spec_sections(doc: Path) -> None:
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(doc.read_text().splitlines(), 1)
            if ENGINEERING.search(line)]
    assert not hits, hits


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue                                # web links and same-page anchors
        path, _, fragment = target.partition("#")
        linked = (doc.parent / path).resolve()
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md":
            headings = {anchor(line.lstrip("#")) for line in linked.read_text().splitlines()
                        if line.startswith("#")}
            if fragment not in headings:
                broken.append(target)
    assert not broken, broken
