"""`truckllm serve` processes for the tests, forked from one that has imported its libraries.

`python -m truckllm serve` spends about 0.4 s of CPU before it listens, nearly all of it
importing aiohttp, pydantic and the other libraries, and the harness starts some sixty of
them: about a quarter of the CPU of `make test`, on two cores. Each test worker
instead starts one fork server (multiprocessing's "forkserver" start method) that imports
those libraries once, and forks it for every `truckllm serve` a test starts.

The child is a process of its own. It takes the test's environment and directory, sends
its output to the log file, imports TruckLLM itself and runs `truckllm.cli.main` with the
arguments of the command line, as `python -m truckllm` does: it listens, reloads, drains
on SIGTERM and exits with the command's code. TruckLLM is not in the preloaded list, so
what it reads or makes as it is imported (TRUCKLLM_SEAL_KEY, the seal's key) is the
child's own. What the fork shares is the libraries' import, and the interpreter's
start-up; the plain command line, with both, is what tests/test_cli.py,
tests/e2e/test_workers.py and `make test-dist` start.

This module imports only the standard library: the fork server's children import it to
find the function they run.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from signal import SIGKILL

# What `truckllm serve` imports from outside TruckLLM, heaviest first. A library missing
# here is imported by each child instead: slower, not different.
PRELOADED = ("aiohttp.web", "pydantic.main", "pydantic_core", "structlog", "prometheus_client",
             "click", "yaml", "redis.asyncio", "watchfiles", "ruamel.yaml", "msgspec", "orjson",
             "uvloop", "sqlite3", "difflib")

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(list(PRELOADED))


class ForkedServe:
    """A forked `truckllm serve`, with the names of subprocess.Popen that the tests use."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: Sequence[str]) -> None:
        self._process = process
        self.args = list(args)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(SIGKILL)


def start_serve(args: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                log_path: Path) -> ForkedServe:
    """`truckllm <args>` (`serve ...`) in a child of the fork server. Daemonic: one a test
    left running is stopped when its test worker exits."""
    process = _CONTEXT.Process(target=_run, args=(list(args), dict(env), str(cwd), str(log_path)),
                               name="truckllm", daemon=True)
    process.start()
    return ForkedServe(process, ["truckllm", *args])


def _run(args: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """In the child: the command line's environment, directory and output, then its CLI."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
    os.close(log)
    from truckllm.cli import main
    main(args, prog_name="truckllm")
