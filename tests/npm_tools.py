"""Node clients for the end-to-end tests, installed from the npm registry (pinned
versions) when missing into the user's cache directory (`~/.cache/truckllm-tests/`, or under
XDG_CACHE_HOME), in a folder named for the pinned versions: every checkout on the machine
uses the one install (about 700 MB, most of it the Claude Code and Codex executables)
instead of installing again on its first run. The tests skip, saying why, only when npm or
the registry cannot be reached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.installs import one_at_a_time

# Pinned: the tests prove these versions work; an upgrade is a deliberate change here.
PACKAGES = {"openai": "7.60.0", "@openai/codex": "0.171.0", "@anthropic-ai/claude-code": "2.1.197"}
INSTALL_TIMEOUT_S = 600
_USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
_PINS = hashlib.sha256(json.dumps(PACKAGES, sort_keys=True).encode()).hexdigest()[:16]
CACHE = _USER_CACHE / "truckllm-tests" / f"npm-{_PINS}"
MARKER = CACHE / "installed.json"     # written once an install has finished


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
    # The versions are exact, so what npm's own cache holds for them needs no new look at
    # the registry.
    try:
        done = subprocess.run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                               "--no-save", "--prefer-offline", *specs], capture_output=True, text=True,
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


def _installed(name: str, version: str) -> bool:
    manifest = CACHE / "node_modules" / name / "package.json"
    try:
        return bool(json.loads(manifest.read_text()).get("version") == version)
    except (OSError, ValueError):
        return False
