"""The wheel `make dist` builds, installed into a fresh virtual environment and run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest

from tests.harness import free_port
from tests.packaging.conftest import Built

pytestmark = pytest.mark.dist      # builds the executable first: `make test-dist`


def test_the_wheel_installs_and_serves(built: Built, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    install = subprocess.run([str(env_dir / "bin" / "pip"), "install", "--quiet", str(built.wheel)],
                             capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    command = str(env_dir / "bin" / "truckllm")
    work = tmp_path / "run"
    work.mkdir()
    assert subprocess.run([command, "init", "config.yaml"], cwd=work, check=False).returncode == 0
    port = free_port()
    process = subprocess.Popen([command, "serve", "-c", "config.yaml", "--port", str(port)], cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = _get(f"http://127.0.0.1:{port}/health")
        assert body["status"] == "ok"
        request = urllib.request.Request(            # the starter config has no keys: open
            f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
            data=json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.loads(reply.read())["choices"][0]["message"]["content"] == "You said: hi"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert not command.startswith(sys.prefix)     # not this test run's own environment


def _get(url: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                result: dict[str, object] = json.loads(reply.read())
                return result
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
