"""systemd/truckllm.service passes `systemd-analyze verify` (skipped where it is missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "truckllm.service"
REQUIRED = [
    "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
    "StateDirectory=truckllm", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
    "EnvironmentFile=/etc/truckllm/env",
    "ExecStart=/opt/truckllm/bin/truckllm serve -c /etc/truckllm/config.yaml",
]


def test_unit_has_the_promised_settings() -> None:
    lines = set(UNIT.read_text().splitlines())
    assert [line for line in REQUIRED if line not in lines] == []
    assert not [line for line in lines if line.startswith(("ReadWritePaths", "User="))]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's interpreter.
    unit = tmp_path / "truckllm.service"
    unit.write_text(UNIT.read_text().replace(
        "ExecStart=/opt/truckllm/bin/truckllm", f"ExecStart={sys.executable} -m truckllm"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "truckllm.service" in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr
