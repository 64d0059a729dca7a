"""Rounds of load against each target, alternating, and what they add up to.

A run: one load generator process (pinned to the load core) opens its connections, then,
between two reads of the proxy's and the fake's CPU time, sends requests for a fixed time.
A round: every scenario against every target, targets in turn (the order rotates each
round), on proxies started afresh for the round (bench.fleet). Runs of the same scenario
are pooled over rounds: latencies are merged, CPU and requests summed, so a slow moment of
this shared machine hits every target alike, and each round's processes are one sample.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from bench.processes import Child, core_busy_seconds, pin_self


@dataclass(frozen=True)
class Target:
    name: str                 # "direct", "reference", "truckllm"
    port: int
    key: str
    model: str
    proxy: Child | None       # None for the fake called directly


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    stream: bool


SCENARIOS = (
    Scenario("c1", 1, False),
    Scenario("c16", 16, False),
    Scenario("c64", 64, False),
    Scenario("stream c1", 1, True),
    Scenario("stream c16", 16, True),
)


@dataclass
class Totals:
    """Everything measured for one (scenario, target), pooled over rounds."""

    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    proxy_cpu_s: float = 0.0
    fake_cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    others_on_proxy_core_s: float = 0.0     # CPU other processes took on the proxy's core
    latency_ms: list[float] = field(default_factory=list)
    first_chunk_ms: list[float] = field(default_factory=list)
    round_cpu_us: list[float] = field(default_factory=list)   # proxy CPU per request, each round

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    def proxy_cpu_us(self) -> float:
        return self.proxy_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def fake_cpu_us(self) -> float:
        return self.fake_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def load_core_busy(self) -> float:
        return (self.fake_cpu_s + self.load_cpu_s) / self.wall_s if self.wall_s else 0.0

    def disturbance(self) -> float:
        """Share of the proxy core that other processes used during the runs."""
        return self.others_on_proxy_core_s / self.wall_s if self.wall_s else 0.0

    def proxy_core_busy(self) -> float:
        return self.proxy_cpu_s / self.wall_s if self.wall_s else 0.0


def percentile(samples: Sequence[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=1000, method="inclusive")[round(fraction * 1000) - 1]


def run_once(target: Target, scenario: Scenario, fake: Child, cores: tuple[int | None, int | None],
             duration_s: float, totals: Totals | None) -> None:
    """One timed run; adds to `totals` (None for a warm-up). `cores`: (proxy, load)."""
    proxy_core, load_core = cores
    out = fake.log_path.with_name("loadgen-result.json")
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(target.port), "--key", target.key,
               "--model", target.model, "--concurrency", str(scenario.concurrency),
               "--duration", str(duration_s), "--out", str(out)] + (["--stream"] if scenario.stream else [])
    load = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=(lambda: pin_self(load_core)) if load_core is not None else None)
    assert load.stdin is not None and load.stdout is not None
    try:
        if load.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"load generator failed against {target.name}")
        proxy_before = target.proxy.cpu_seconds() if target.proxy else 0.0
        fake_before = fake.cpu_seconds()
        core_before = core_busy_seconds(proxy_core)
        load.stdin.write(b"go\n")
        load.stdin.flush()
        if load.stdout.readline().strip() != b"done":
            raise RuntimeError(f"load generator failed against {target.name}")
        result = orjson.loads(out.read_bytes())
        proxy_after = target.proxy.cpu_seconds() if target.proxy else 0.0
        fake_after = fake.cpu_seconds()
        core_after = core_busy_seconds(proxy_core)
    finally:
        load.stdin.close()
        load.wait(timeout=duration_s + 30)
    if totals is None:
        return
    totals.requests += result["requests"]
    totals.errors += result["errors"]
    totals.wall_s += result["wall_s"]
    totals.load_cpu_s += result["cpu_s"]
    totals.proxy_cpu_s += proxy_after - proxy_before
    if result["requests"]:
        totals.round_cpu_us.append((proxy_after - proxy_before) / result["requests"] * 1e6)
    totals.fake_cpu_s += fake_after - fake_before
    if proxy_core is not None:
        totals.others_on_proxy_core_s += max(0.0, (core_after - core_before) - (proxy_after - proxy_before))
    totals.latency_ms += result["latency_ms"]
    totals.first_chunk_ms += result["ttfb_ms"]


class Fleet(Protocol):
    """Whatever starts the targets of each round (bench.fleet.Fleet)."""

    def start_round(self, index: int) -> list[Target]: ...

    def end_round(self) -> None: ...


def run_rounds(fleet: Fleet, scenarios: Sequence[Scenario], fake: Child,
               cores: tuple[int | None, int | None], rounds: int, duration_s: float,
               progress: bool = True) -> dict[tuple[str, str], Totals]:
    """Every scenario, every target, `rounds` times, on targets the fleet starts afresh for
    each round; the target order rotates each round."""
    results: dict[tuple[str, str], Totals] = {}
    for round_index in range(rounds):
        targets = fleet.start_round(round_index)
        try:
            for target in targets:
                if target.proxy is not None or round_index == 0:
                    warm_up(target, fake, cores)
            shift = round_index % len(targets)
            order = [*targets[shift:], *targets[:shift]]
            for scenario in scenarios:
                for target in order:
                    totals = results.setdefault((scenario.name, target.name), Totals())
                    run_once(target, scenario, fake, cores, duration_s, totals)
                    if progress:
                        print(f"  round {round_index + 1}/{rounds} {scenario.name:>10} {target.name:<9} "
                              f"{totals.rps:8.0f} req/s so far", file=sys.stderr, flush=True)
        finally:
            fleet.end_round()
    return results


def warm_up(target: Target, fake: Child, cores: tuple[int | None, int | None]) -> None:
    """Unmeasured load on a fresh process: pools, caches and first-request paths filled."""
    run_once(target, Scenario("warm-up", 16, False), fake, cores, 1.0, None)
    run_once(target, Scenario("warm-up", 4, True), fake, cores, 0.5, None)
