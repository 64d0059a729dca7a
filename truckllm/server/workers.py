"""`truckllm serve --workers N`: a supervising process and N worker processes on one port.

The supervisor starts N copies of `truckllm serve` and does nothing else: every worker
binds the same address with SO_REUSEPORT (the kernel spreads connections over them),
a worker that dies is started again, SIGHUP is passed to every worker (each reloads its
config file) and SIGTERM/SIGINT too (each drains as one process would; the supervisor
exits 0 when all have). Limits and budgets are only one set across workers through
`server.state_url`: without it, a config with any is refused.

Workers know each other through a directory the supervisor makes: each writes there the
port of a private 127.0.0.1 listener serving its own metrics and its own part of every
admin answer (only to callers with the token the supervisor gives its workers), so that
`/metrics` and the admin API, on whichever worker takes the call, answer for all of them
(`merge_metrics` here, truckllm.server.peers for the admin API).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from prometheus_client.parser import text_string_to_metric_families

from truckllm.config.schema import Config
from truckllm.limits.policy import compile_policy
from truckllm.protocols.responses.sealed import SEAL_KEY_ENV

log = structlog.get_logger("truckllm")

WORKER_DIR_ENV = "TRUCKLLM_WORKER_DIR"
WORKER_INDEX_ENV = "TRUCKLLM_WORKER_INDEX"
WORKER_TOKEN_ENV = "TRUCKLLM_WORKER_TOKEN"     # what the workers' private listeners want
RESTART_DELAY_S = 1.0
POLL_S = 0.2
# Gauges that describe the server (not add up over workers): the largest is shown; the
# state backend is up only if it is up for every worker.
_SAME_EVERYWHERE = frozenset({"truckllm_config_version",
                              "truckllm_config_last_reload_timestamp_seconds",
                              "llm_upstream_status"})
_ALL_MUST = frozenset({"truckllm_state_backend_up", "truckllm_config_last_reload_success"})


def refusal(config: Config, workers: int) -> str | None:
    """Why `--workers` cannot run this config; None if it can."""
    if workers <= 1 or config.server.state_url is not None:
        return None
    policy = compile_policy(config)
    limited = (policy.gateway.limited or policy.limits_upstream
               or any(key.limited for key in policy.keys.values()))
    if not limited:
        return None
    return (f"--workers {workers} with rate limits or budgets in the config needs "
            "server.state_url (e.g. redis://127.0.0.1:6379/0): without a shared state each "
            "worker would count on its own and allow up to "
            f"{workers} times every limit. Set server.state_url, or run one worker.")


def worker_command(config_path: str, host: str, port: int) -> list[str]:
    if getattr(sys, "frozen", False):       # the one-file executable is its own interpreter
        return [sys.executable, "serve", "-c", config_path, "--host", host, "--port", str(port)]
    return [sys.executable, "-m", "truckllm", "serve", "-c", config_path, "--host", host,
            "--port", str(port)]


def supervise(config_path: str, host: str, port: int, workers: int) -> int:
    """Run N workers until SIGTERM/SIGINT; returns the exit status (0 after a drain)."""
    directory = tempfile.mkdtemp(prefix="truckllm-workers-")
    command = worker_command(config_path, host, port)
    processes: dict[int, subprocess.Popen[bytes]] = {}
    restart_at: dict[int, float] = {}
    stopping = False
    hup = False

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(signum: int, frame: FrameType | None) -> None:
        nonlocal hup
        hup = True

    # One key for the reasoning sealed in Responses answers, so a conversation's next turn
    # opens it on whichever worker takes it (unless the operator set one for every instance).
    seal_key = os.environ.get(SEAL_KEY_ENV) or secrets.token_hex(32)
    token = secrets.token_hex(32)

    def start(index: int) -> None:
        env = {**os.environ, WORKER_DIR_ENV: directory, WORKER_INDEX_ENV: str(index),
               SEAL_KEY_ENV: seal_key, WORKER_TOKEN_ENV: token}
        processes[index] = subprocess.Popen(command, env=env)
        log.info("worker_started", worker=index, pid=processes[index].pid)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("supervising", workers=workers, url=f"http://{host}:{port}", pid=os.getpid())
    for index in range(workers):
        start(index)
    try:
        while not stopping:
            time.sleep(POLL_S)
            if hup:
                hup = False
                _send_all(processes, signal.SIGHUP)
            now = time.monotonic()
            for index, process in list(processes.items()):
                code = process.poll()
                if code is None or stopping:
                    continue
                if index not in restart_at:
                    log.warning("worker_exited", worker=index, pid=process.pid, code=code,
                                action=f"starting it again in {RESTART_DELAY_S:g}s")
                    restart_at[index] = now + RESTART_DELAY_S
                elif now >= restart_at[index]:
                    del restart_at[index]
                    start(index)
        _send_all(processes, signal.SIGTERM)
        failed = 0
        for process in processes.values():
            if process.wait() not in (0, -signal.SIGTERM):
                failed += 1
        log.info("stopped", workers=workers)
        return 1 if failed else 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        for leftover in Path(directory).glob("*"):
            leftover.unlink(missing_ok=True)
        os.rmdir(directory)


def _send_all(processes: dict[int, subprocess.Popen[bytes]], signum: int) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signum)


# -- the workers' side --------------------------------------------------------------


def worker_identity() -> tuple[Path, int] | None:
    """(the supervisor's directory, this worker's index) when run as a worker."""
    directory, index = os.environ.get(WORKER_DIR_ENV), os.environ.get(WORKER_INDEX_ENV)
    if not directory or index is None or not index.isdigit():
        return None
    return Path(directory), int(index)


def worker_token() -> str:
    """What this worker's private listener asks of callers, and sends to the others'
    ("" when not set: then the private listeners answer nobody)."""
    return os.environ.get(WORKER_TOKEN_ENV, "")


def announce(directory: Path, index: int, port: int) -> None:
    """Tell the other workers where this one's private listener is."""
    temp = directory / f".worker-{index}.tmp"
    temp.write_text(str(port))
    os.replace(temp, directory / f"worker-{index}.port")


def peer_ports(directory: Path, index: int) -> list[int]:
    ports = []
    for path in directory.glob("worker-*.port"):
        if path.name != f"worker-{index}.port":
            try:
                ports.append(int(path.read_text()))
            except (OSError, ValueError):
                continue
    return ports


def merge_metrics(texts: list[str]) -> str:
    """Several workers' Prometheus exposition texts as one: counters, histograms and
    gauges of work in progress add up; gauges that describe the server are shown once."""
    docs: dict[str, tuple[str, str]] = {}
    order: list[str] = []
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in docs:
                docs[family.name] = (family.documentation, family.type)
                order.append(family.name)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] = _combine(family.name, family.type, samples[key], sample.value)
    lines: list[str] = []
    for name in order:
        documentation, kind = docs[name]
        shown = f"{name}_total" if kind == "counter" else name     # as prometheus-client writes it
        lines.append(f"# HELP {shown} {_escape_help(documentation)}")
        lines.append(f"# TYPE {shown} {kind}")
        for (sample_name, labels), value in values[name].items():
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{rendered}}} {_number(value)}" if rendered
                         else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _combine(name: str, kind: str, a: float, b: float) -> float:
    if name in _ALL_MUST:
        return min(a, b)
    if kind in ("gauge", "info", "stateset") and (name in _SAME_EVERYWHERE
                                                  or name.endswith("_info") or kind != "gauge"):
        return max(a, b)
    return a + b


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str:
    number = float(value)
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return repr(number)
