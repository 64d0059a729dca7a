"""Node clients for the end-to-end tests, installed from the npm registry (pinned
versions) into `.cache/npm/` at the repository root when missing. The tests skip, saying
why, only when npm or the registry cannot be reached."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.installs import one_at_a_time

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "npm"
MARKER = CACHE / "installed.json"     # written once an install has finished
# Pinned: the tests prove these versions work; an upgrade is a deliberate change here.
PACKAGES = {"openai": "7.60.0", "@openai/codex": "0.171.0", "@anthropic-ai/claude-code": "2.1.197"}
INSTALL_TIMEOUT_S = 600


def npm_packages() -> Path:
    """The directory whose node_modules hold PACKAGES at their pinned versions."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed: the Node client tests need them")
    if _complete():
        return CACHE
    with one_at_a_time("npm"):
        if not _complete():
            _install()
    return CACHE


def _install() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    MARKER.unlink(missing_ok=True)
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    try:
        done = subprocess.run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                               "--no-save", *specs], capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("the npm registry did not answer in time: Node client tests skipped")
    if done.returncode != 0:
        pytest.skip(f"npm install failed (registry unreachable?): {done.stderr.strip()[-300:]}")
    MARKER.write_text(json.dumps(PACKAGES))


def _complete() -> bool:
    """PACKAGES installed by an `npm install` that finished (a package.json alone may be
    another worker's install halfway)."""
    try:
        if json.loads(MARKER.read_text()) != PACKAGES:
            return False
    except (OSError, ValueError):
        return False
    return all(_installed(name, version) for name, version in PACKAGES.items())
    return CACHE


def _installed(name: str, version: str) -> bool:
    manifest = CACHE / "node_modules" / name / "package.json"
    try:
        return bool(json.loads(manifest.read_text()).get("version") == version)
    except (OSError, ValueError):
        return False
