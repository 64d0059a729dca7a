"""tests/forked_serve.py, which starts the harness's `truckllm serve` processes: a forked
`truckllm` command runs in the test's directory and environment, writes its output to
the log file and exits with the command's code; the fork server preloads libraries, never
TruckLLM, so what TruckLLM reads as it is imported is each child's own."""

from __future__ import annotations

import os
from pathlib import Path

from tests.forked_serve import PRELOADED, start_serve

CONFIG = """\
version: 1
providers:
  - id: demo
    type: mock
    keys: [{id: k1, value: "${FORKED_KEY}"}]
models:
  - alias: demo
    targets: [{provider: demo, model: echo}]
"""


def test_a_forked_command_runs_in_the_tests_directory_and_environment(tmp_path: Path) -> None:
    (tmp_path / "truckllm.yaml").write_text(CONFIG)
    environment = {name: value for name, value in os.environ.items() if name != "FORKED_KEY"}

    valid = start_serve(["validate", "-c", "truckllm.yaml"], env={**environment, "FORKED_KEY": "k"},
                        cwd=tmp_path, log_path=tmp_path / "valid.log")
    assert valid.wait(timeout=60) == 0
    assert "truckllm.yaml: valid (1 providers, 1 aliases" in (tmp_path / "valid.log").read_text()

    refused = start_serve(["validate", "-c", "truckllm.yaml"], env=environment,
                          cwd=tmp_path, log_path=tmp_path / "refused.log")
    assert refused.wait(timeout=60) == 1
    assert "environment variable FORKED_KEY is not set" in (tmp_path / "refused.log").read_text()


def test_the_fork_server_preloads_libraries_only() -> None:
    assert PRELOADED
    assert not [name for name in PRELOADED if name.split(".")[0] == "truckllm"]
