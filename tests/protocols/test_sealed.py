"""The seal of a translated answer's reasoning (`encrypted_content`) across processes: two
processes given the same TRUCKLLM_SEAL_KEY (as `serve --workers` gives its workers, or an
operator every instance) open each other's content; a process with its own key does not,
and the content is then dropped rather than an error."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from tests.harness import REPO_ROOT
from truckllm.protocols.responses.sealed import SEAL_KEY_ENV

STATE = {"provider": "anthropic", "blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]}
SEAL = "import sys, orjson; from truckllm.protocols.responses.sealed import seal; print(seal(orjson.loads(sys.argv[1])))"
OPEN = ("import sys, orjson; from truckllm.protocols.responses.sealed import unseal; "
        "print(orjson.dumps(unseal(sys.argv[1])).decode())")


def run(code: str, argument: str, key: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != SEAL_KEY_ENV}
    if key is not None:
        env[SEAL_KEY_ENV] = key
    done = subprocess.run([sys.executable, "-c", code, argument], env={**env, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_processes_with_one_key_open_each_others_seals() -> None:
    sealed = run(SEAL, orjson.dumps(STATE).decode(), "one shared key")
    assert "signature" not in sealed
    assert orjson.loads(run(OPEN, sealed, "one shared key")) == STATE
    assert orjson.loads(run(OPEN, sealed, "another key")) is None
    assert orjson.loads(run(OPEN, sealed, None)) is None       # a key of its own
