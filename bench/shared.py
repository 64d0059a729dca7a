"""`make bench`, second part (python -m bench.shared): what sharing limits through Redis
costs, and what `--workers 2` gives.

1. The Redis-backed limiter beside the in-memory one, in the same run, alternating: a
   client key with rpm, tpm and a budget (never reached), 8 connections sending
   non-streamed requests back to back through TruckLLM to the fake upstream. Reported:
   requests/s, p50 latency, TruckLLM's CPU per request and Redis's, and the differences.
2. `truckllm serve --workers 2` beside one worker (no limits), 32 connections: requests/s.

Starts its own fake upstream and redis-server (tests.redis_server: apt-installed when
missing, 127.0.0.1, no persistence). Bounded in time; prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.processes import CLOCK_TICKS, Child, free_port, start_child, wait_for_port
from bench.targets import ALIAS, CLIENT_KEY, check_answers, truckllm_command, truckllm_config
from tests.redis_server import RedisServer

LIMITS = "    rpm: 100000000\n    tpm: 1000000000000\n    budget_usd: 1000000000\n"


@dataclass
class Figures:
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)        # TruckLLM, per request
    redis_cpu_us: list[float] = field(default_factory=list)  # redis-server, per request


def config(port: int, upstream_port: int, state_url: str | None, limited: bool) -> str:
    text = truckllm_config(port, upstream_port).replace("  port:", "  watch: false\n  port:")
    if state_url is not None:
        text = text.replace("  port:", f"  state_url: {state_url}\n  port:")
    if limited:
        text = text.rstrip("\n") + "\n" + LIMITS
    return text


def load(port: int, concurrency: int, duration_s: float, work: Path) -> dict[str, object]:
    out = work / f"load-{port}-{concurrency}.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--key", CLIENT_KEY,
         "--model", ALIAS, "--concurrency", str(concurrency), "--duration", str(duration_s),
         "--out", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")
        process.stdin.write("go\n")
        process.stdin.flush()
        if process.stdout.readline().strip() != "done":
            raise RuntimeError("the load generator did not finish")
        result: dict[str, object] = orjson.loads(out.read_bytes())
        return result
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def pid_cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_truckllm(work: Path, name: str, upstream_port: int, state_url: str | None,
                   limited: bool, workers: int = 1) -> tuple[Child, int]:
    port = free_port()
    directory = work / name
    directory.mkdir()
    path = directory / "bench.yaml"
    path.write_text(config(port, upstream_port, state_url, limited))
    command = truckllm_command(path, port)
    if workers > 1:
        command += ["--workers", str(workers)]
    child = start_child(name, command, None, work)
    wait_for_port(child, port)
    check_answers(port, CLIENT_KEY, ALIAS)
    return child, port


def measure(child: Child, port: int, redis: RedisServer | None, concurrency: int,
            duration_s: float, work: Path, into: Figures) -> None:
    redis_pid = redis.process.pid if redis is not None and redis.process else None
    cpu_before = child.cpu_seconds()
    redis_before = pid_cpu_s(redis_pid) if redis_pid else 0.0
    result = load(port, concurrency, duration_s, work)
    requests = int(str(result["requests"])) or 1
    latencies = result["latency_ms"]
    assert isinstance(latencies, list)
    into.rps.append(requests / float(str(result["wall_s"])))
    into.p50_ms.append(statistics.median(latencies) if latencies else float("nan"))
    into.cpu_us.append((child.cpu_seconds() - cpu_before) / requests * 1e6)
    if redis_pid:
        into.redis_cpu_us.append((pid_cpu_s(redis_pid) - redis_before) / requests * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shared", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    figures = {"memory": Figures(), "redis": Figures(), "1 worker": Figures(),
               "2 workers": Figures()}
    with tempfile.TemporaryDirectory(prefix="truckllm-bench-shared-") as scratch:
        work = Path(scratch)
        fake_port = free_port()
        fake = start_child("fake", [sys.executable, "-m", "bench.fake_upstream", "--port",
                                    str(fake_port)], None, work)
        redis = RedisServer()
        try:
            wait_for_port(fake, fake_port)
            redis.start()
            for index in range(args.rounds):
                for name, url in (("memory", None), ("redis", redis.url)):
                    child, port = start_truckllm(work, f"{name}-{index}", fake_port, url, True)
                    try:
                        measure(child, port, redis if url else None, 8, args.duration, work,
                                figures[name])
                    finally:
                        child.stop()
                for name, workers in (("1 worker", 1), ("2 workers", 2)):
                    child, port = start_truckllm(work, f"w{workers}-{index}", fake_port, None,
                                                 False, workers)
                    try:
                        time.sleep(1.0 if workers > 1 else 0.0)    # every worker listening
                        measure(child, port, None, 32, args.duration, work, figures[name])
                    finally:
                        child.stop()
        finally:
            redis.stop()
            fake.stop()
    print(render(figures, args))


def render(figures: dict[str, Figures], args: argparse.Namespace) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    memory, redis = figures["memory"], figures["redis"]
    lines = [
        f"### Shared state and workers ({args.rounds} rounds of {args.duration:g} s, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        "A client key with rpm, tpm and a budget; 8 connections, non-streamed requests "
        "(medians over rounds).",
        "",
        "| limiter | requests/s | p50 ms | TruckLLM CPU µs/request | redis-server CPU µs/request |",
        "|---|---:|---:|---:|---:|",
        f"| in memory | {med(memory.rps):.0f} | {med(memory.p50_ms):.2f} | "
        f"{med(memory.cpu_us):.0f} | - |",
        f"| Redis (`state_url`) | {med(redis.rps):.0f} | {med(redis.p50_ms):.2f} | "
        f"{med(redis.cpu_us):.0f} | {med(redis.redis_cpu_us):.0f} |",
        "",
        f"Redis adds {med(redis.p50_ms) - med(memory.p50_ms):+.2f} ms p50 and "
        f"{(med(redis.cpu_us) / med(memory.cpu_us) - 1) * 100:+.0f}% TruckLLM CPU per request.",
        "",
        "| `truckllm serve` | requests/s (32 connections, no limits) |",
        "|---|---:|",
        f"| `--workers 1` | {med(figures['1 worker'].rps):.0f} |",
        f"| `--workers 2` | {med(figures['2 workers'].rps):.0f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
