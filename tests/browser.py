"""A real headless Chromium for browser tests: Debian's `chromium`, installed with apt
when missing (browser downloads are not possible here, so never `playwright install`),
driven by Playwright through its executable path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.installs import one_at_a_time

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
_APT_TIMEOUT_S = 900


def ensure_chromium() -> Path:
    """The system Chromium, installed with apt-get the first time it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("no /usr/bin/chromium and no apt-get to install it (not Debian)")
    with one_at_a_time("apt"):
        if CHROMIUM.exists():       # another test worker installed it meanwhile
            return CHROMIUM
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [apt, "install", "-y", "--no-install-recommends", "chromium"]
        done = subprocess.run(install, env=env, capture_output=True, timeout=_APT_TIMEOUT_S,
                              check=False)
        if done.returncode != 0:        # a fresh machine may not have the package lists yet
            subprocess.run([apt, "update"], env=env, capture_output=True,
                           timeout=_APT_TIMEOUT_S, check=False)
            done = subprocess.run(install, env=env, capture_output=True,
                                  timeout=_APT_TIMEOUT_S, check=False)
    assert done.returncode == 0 and CHROMIUM.exists(), (
        "could not install chromium with apt-get:\n" + done.stderr.decode(errors="replace")[-2000:])
    return CHROMIUM
