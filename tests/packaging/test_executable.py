"""dist/truckllm, the one-file executable, run where there is no Python project: a copy
of it in an empty directory, started with an empty environment (`env -i`)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from tests.harness import free_port
from tests.packaging.conftest import ROOT, Built

pytestmark = pytest.mark.dist      # builds the executable first: `make test-dist`

KEY = "tk-dist-test-key-0001"
CONFIG = {
    "version": 1,
    "server": {"log_format": "json", "watch": False, "shutdown_grace_s": 10},
    "providers": [{"id": "demo", "type": "mock", "chunk_delay_ms": 10}],
    "models": [{"alias": "demo", "targets": [{"provider": "demo", "model": "mock-1"}]}],
    "keys": [{"id": "team", "key": KEY}],
}


@pytest.fixture
def elsewhere(tmp_path: Path, built: Built) -> Path:
    """A directory with only the executable in it, far from the source tree."""
    shutil.copy2(built.executable, tmp_path / "truckllm")
    return tmp_path


def run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./truckllm", *args], cwd=directory, env={}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_executable_carries_every_package_file_and_the_compiled_extras(built: Built) -> None:
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "truckllm"], capture_output=True,
                             text=True, check=True).stdout.split()
    package_files = [name for name in tracked if not name.endswith(".py")]
    assert "truckllm/py.typed" in package_files
    assert [name for name in package_files if name not in built.contents] == []
    for module in ("truckllm.server.runner", "truckllm.providers.anthropic",
                   "opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        assert module in built.contents
    compiled = [name for name in built.contents if name.endswith(".so")]
    assert any(name.startswith("uvloop/loop.") for name in compiled)
    assert any(name.startswith("orjson/orjson.") for name in compiled)


def test_init_validate_and_help_with_no_environment(elsewhere: Path) -> None:
    assert run(elsewhere, "--version").stdout.startswith("truckllm, version")
    assert "serve" in run(elsewhere, "-h").stdout
    assert run(elsewhere, "init", "starter.yaml").returncode == 0
    checked = run(elsewhere, "validate", "-c", "starter.yaml")
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr
    (elsewhere / "bad.yaml").write_text("version: 1\nprovders: []\n")
    refused = run(elsewhere, "validate", "-c", "bad.yaml")
    assert refused.returncode == 1 and "bad.yaml:2:1" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.fixture
def served(elsewhere: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    (elsewhere / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    log = elsewhere / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["./truckllm", "serve", "-c", "config.yaml", "--port", str(port)],
                                   cwd=elsewhere, env={}, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(process, port, log)
        yield process, port, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_serve_answers_reloads_on_sighup_and_exits_0_on_sigterm(
        served: tuple[subprocess.Popen[bytes], int, Path], elsewhere: Path) -> None:
    process, port, log = served
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
        assert json.loads(reply.read())["status"] == "ok"
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "You said: hi"
    stream = client.chat.completions.create(model="demo", stream=True,
                                            messages=[{"role": "user", "content": "one two three"}])
    chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(chunks) > 2 and "".join(chunks) == "You said: one two three"

    changed = {**CONFIG, "models": [*CONFIG["models"], {"alias": "demo-2", "targets": [
        {"provider": "demo", "model": "mock-2"}]}]}
    (elsewhere / "config.yaml").write_text(yaml.safe_dump(changed))
    process.send_signal(signal.SIGHUP)
    _wait_until(lambda: "demo-2" in {model.id for model in client.models.list().data})
    process.send_signal(signal.SIGHUP)          # the same bytes again: one line says so
    _wait_until(lambda: "config unchanged" in log.read_text())
    client.close()

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    text = log.read_text()
    assert "Traceback" not in text and KEY not in text
    assert (elsewhere / "config.state.json").is_file()     # beside the config


def _wait_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"truckllm exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"truckllm did not become healthy:\n{log.read_text()}")


def _wait_until(condition: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_under_systemd_the_state_file_goes_in_the_state_directory(elsewhere: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    state_directory = tmp_path_factory.mktemp("var-lib-truckllm")
    (elsewhere / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    log = elsewhere / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["./truckllm", "serve", "-c", "config.yaml", "--port", str(port)],
                                   cwd=elsewhere, env={"STATE_DIRECTORY": str(state_directory)},
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(process, port, log)
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0) as client:
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        process.send_signal(signal.SIGTERM)             # saves the usage of that request
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert (state_directory / "config.state.json").is_file()
    assert not (elsewhere / "config.state.json").exists()
    assert str(state_directory / "config.state.json") in log.read_text()      # the startup line
