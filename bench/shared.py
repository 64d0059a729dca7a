"""`make bench`, second part (python -m bench.shared): what sharing limits through Redis
costs, and what `--workers 2` gives.

1. The Redis-backed limiter beside the in-memory one, in the same run, alternating: a
   client key with rpm, tpm and a budget (never reached), `--concurrency` connections
   (8) sending non-streamed requests back to back through TruckLLM to the fake upstream.
   TruckLLM is pinned to one CPU; the load generator, the fake upstream and
   redis-server share the other (as in `make bench`: what Redis costs on its own host is
   reported beside, not taken from TruckLLM's core). Reported: requests/s, p50 latency,
   TruckLLM's CPU per request and Redis's, and the differences.
2. `truckllm serve --workers 2` beside one worker (no limits), 32 connections, nothing
   pinned: requests/s.

With `--unix`, the Redis-backed limiter also runs with `state_url` on redis-server's
unix socket (a third row), to see what the TCP connection costs on one host.

With `--instructions`, instead: TruckLLM's machine instructions per request under
callgrind (bench.instructions), in-memory vs Redis-backed, same key and load — the
deterministic figure to judge a change by on a shared machine.

Starts its own fake upstream and redis-server (tests.redis_server: apt-installed when
missing, 127.0.0.1, no persistence). Bounded in time; prints markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson

from bench.instructions import instructions_per_request
from bench.processes import (
    CLOCK_TICKS,
    Child,
    cores,
    free_port,
    pin_self,
    start_child,
    wait_for_port,
)
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
    return edited(truckllm_config(port, upstream_port), state_url, limited)


def edited(text: str, state_url: str | None, limited: bool) -> str:
    """The bench's TruckLLM config with config watching off, `state_url` and the limits."""
    text = text.replace("  port:", "  watch: false\n  port:")
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
                   limited: bool, workers: int = 1,
                   core: int | None = None) -> tuple[Child, int]:
    port = free_port()
    directory = work / name
    directory.mkdir()
    path = directory / "bench.yaml"
    path.write_text(config(port, upstream_port, state_url, limited))
    command = truckllm_command(path, port)
    if workers > 1:
        command += ["--workers", str(workers)]
    child = start_child(name, command, core, work)
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
    parser = argparse.ArgumentParser(prog="python -m bench.shared", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="connections of the limiter comparison")
    parser.add_argument("--unix", action="store_true",
                        help="also the Redis-backed limiter over a unix socket")
    parser.add_argument("--instructions", action="store_true",
                        help="count TruckLLM's instructions per request under callgrind instead")
    args = parser.parse_args()
    if args.instructions:
        print(count_instructions(args))
        return
    everywhere = os.sched_getaffinity(0)
    proxy_core, load_core = cores()
    pin_self(load_core)         # the load generators are started from here
    figures = {"memory": Figures(), "redis": Figures(), "redis unix": Figures(),
               "1 worker": Figures(), "2 workers": Figures()}
    with tempfile.TemporaryDirectory(prefix="truckllm-bench-shared-") as scratch:
        work = Path(scratch)
        fake_port = free_port()
        fake = start_child("fake", [sys.executable, "-m", "bench.fake_upstream", "--port",
                                    str(fake_port)], load_core, work)
        redis = RedisServer(unix_socket=work / "redis.sock")
        try:
            wait_for_port(fake, fake_port)
            redis.start()
            if load_core is not None and redis.process is not None:
                os.sched_setaffinity(redis.process.pid, {load_core})
            for index in range(args.rounds):
                limiters = [("memory", None), ("redis", redis.url)]
                if args.unix:
                    limiters.append(("redis unix", redis.unix_url))
                for name, url in limiters:
                    child, port = start_truckllm(work, f"{name}-{index}", fake_port, url, True,
                                                 core=proxy_core)
                    try:
                        measure(child, port, redis if url else None, args.concurrency,
                                args.duration, work, figures[name])
                    finally:
                        child.stop()
                os.sched_setaffinity(0, everywhere)     # the workers' comparison uses all
                for name, workers in (("1 worker", 1), ("2 workers", 2)):
                    child, port = start_truckllm(work, f"w{workers}-{index}", fake_port, None,
                                                 False, workers)
                    try:
                        time.sleep(1.0 if workers > 1 else 0.0)    # every worker listening
                        measure(child, port, None, 32, args.duration, work, figures[name])
                    finally:
                        child.stop()
                pin_self(load_core)
        finally:
            redis.stop()
            fake.stop()
    pinned = (f"TruckLLM pinned to CPU {proxy_core}; load generator, fake upstream and "
              f"redis-server to CPU {load_core}." if proxy_core is not None
              else "Single CPU: nothing pinned.")
    print(render(figures, args, pinned))


def count_instructions(args: argparse.Namespace) -> str:
    """TruckLLM's instructions per request, in-memory vs Redis-backed limiter."""
    pin_self(cores()[1])
    with tempfile.TemporaryDirectory(prefix="truckllm-bench-shared-") as scratch:
        redis = RedisServer(unix_socket=Path(scratch) / "redis.sock")
        try:
            redis.start()
            limiters = [("in memory", None), ("Redis (`state_url`)", redis.url)]
            if args.unix:
                limiters.append(("Redis, unix socket", redis.unix_url))
            counts = {name: instructions_per_request(
                "truckllm", args.concurrency, args.duration,
                edit_config=partial(edited, state_url=url, limited=True))
                for name, url in limiters}
        finally:
            redis.stop()
    memory = counts["in memory"]
    lines = ["| limiter | TruckLLM instructions per request | vs in memory |", "|---|---:|---:|"]
    lines += [f"| {name} | {count / 1000:,.0f}k | {count / memory - 1:+.0%} |"
              for name, count in counts.items()]
    lines += ["", f"A client key with rpm, tpm and a budget; {args.concurrency} connections, "
                  f"non-streamed requests, {args.duration:g} s of load under callgrind each."]
    return "\n".join(lines)


def render(figures: dict[str, Figures], args: argparse.Namespace, pinned: str) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    memory, redis, unix = figures["memory"], figures["redis"], figures["redis unix"]
    lines = [
        f"### Shared state and workers ({args.rounds} rounds of {args.duration:g} s, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"A client key with rpm, tpm and a budget; {args.concurrency} connections sending "
        f"non-streamed requests back to back (medians over rounds). {pinned}",
        "",
        "| limiter | requests/s | p50 ms | TruckLLM CPU µs/request | redis-server CPU µs/request |",
        "|---|---:|---:|---:|---:|",
        f"| in memory | {med(memory.rps):.0f} | {med(memory.p50_ms):.2f} | "
        f"{med(memory.cpu_us):.0f} | - |",
        f"| Redis (`state_url`) | {med(redis.rps):.0f} | {med(redis.p50_ms):.2f} | "
        f"{med(redis.cpu_us):.0f} | {med(redis.redis_cpu_us):.0f} |",
    ]
    if unix.rps:
        lines.append(f"| Redis, unix socket | {med(unix.rps):.0f} | {med(unix.p50_ms):.2f} | "
                     f"{med(unix.cpu_us):.0f} | {med(unix.redis_cpu_us):.0f} |")
    lines += [
        "",
        f"Redis adds {med(redis.p50_ms) - med(memory.p50_ms):+.2f} ms p50 and "
        f"{(med(redis.cpu_us) / med(memory.cpu_us) - 1) * 100:+.0f}% TruckLLM CPU per request.",
    ]
    if unix.rps:
        lines.append(f"Over the unix socket: {med(unix.p50_ms) - med(memory.p50_ms):+.2f} ms "
                     f"p50 and {(med(unix.cpu_us) / med(memory.cpu_us) - 1) * 100:+.0f}% CPU.")
    lines += [
        "",
        "| `truckllm serve` | requests/s (32 connections, no limits, nothing pinned) |",
        "|---|---:|",
        f"| `--workers 1` | {med(figures['1 worker'].rps):.0f} |",
        f"| `--workers 2` | {med(figures['2 workers'].rps):.0f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
