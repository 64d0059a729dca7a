"""Rounds of load against each target, alternating, and what they add up to.

A slice: a load generator (pinned to the load core, its connections open) sends requests
to one target for a fixed time, between two reads of the proxy's and the fake's CPU time.
A scenario in a round: one load generator per target, then slices against each target in
turn, several times over, so that the targets' slices are never far apart in time and a
slow phase of this shared machine hits them alike. A round: every scenario, on proxies
started afresh for the round (bench.fleet): each round's processes are one sample.
Figures pool everything: latencies merged, CPU and requests summed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from bench.processes import Child, core_busy_seconds, pin_self


@dataclass(frozen=True)
class Target:
    name: str                 # "direct", "reference", "truckllm"
    port: int
    key: str
    model: str
    proxy: Child | None       # None for the fake called directly

    @property
    def proxy_is_truckllm(self) -> bool:
        return self.name == "truckllm"


# The alias (TruckLLM's `model` plus this) whose provider translates /v1/responses through chat.
VIA_CHAT_SUFFIX = "-via-chat"


CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    stream: bool
    path: str = CHAT_PATH
    # TruckLLM serves the scenario through an alias whose provider says `responses: chat`
    # (the Responses API translated through chat); the other targets call /responses.
    via_chat: bool = False


SCENARIOS = (
    Scenario("c1", 1, False),
    Scenario("c16", 16, False),
    Scenario("c64", 64, False),
    Scenario("stream c1", 1, True),
    Scenario("stream c16", 16, True),
    Scenario("responses c16", 16, False, RESPONSES_PATH),
    Scenario("responses stream c16", 16, True, RESPONSES_PATH),
    Scenario("responses via chat stream c16", 16, True, RESPONSES_PATH, via_chat=True),
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
    round_cpu_s: list[float] = field(default_factory=list)      # proxy CPU, each round
    round_requests: list[int] = field(default_factory=list)     # requests, each round

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

    def add(self, result: dict[str, Any], proxy_cpu_s: float, fake_cpu_s: float, others_s: float,
            round_index: int) -> None:
        """One slice's load generator result and CPU readings, in round `round_index`."""
        self.requests += result["requests"]
        self.errors += result["errors"]
        self.wall_s += result["wall_s"]
        self.load_cpu_s += result["cpu_s"]
        self.proxy_cpu_s += proxy_cpu_s
        self.fake_cpu_s += fake_cpu_s
        self.others_on_proxy_core_s += others_s
        self.latency_ms += result["latency_ms"]
        self.first_chunk_ms += result["ttfb_ms"]
        while len(self.round_cpu_s) <= round_index:
            self.round_cpu_s.append(0.0)
            self.round_requests.append(0)
        self.round_cpu_s[round_index] += proxy_cpu_s
        self.round_requests[round_index] += result["requests"]


def percentile(samples: Sequence[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=1000, method="inclusive")[round(fraction * 1000) - 1]


class Load:
    """One load generator process with its connections open to one target, for a
    scenario's slices (`go` on its stdin runs one, `done` reports it)."""

    def __init__(self, target: Target, scenario: Scenario, slice_s: float, out: Path,
                 load_core: int | None) -> None:
        self.target, self.out = target, out
        model = target.model + VIA_CHAT_SUFFIX if scenario.via_chat and target.proxy_is_truckllm else target.model
        command = [sys.executable, "-m", "bench.loadgen", "--port", str(target.port), "--key", target.key,
                   "--model", model, "--path", scenario.path, "--concurrency", str(scenario.concurrency),
                   "--duration", str(slice_s), "--out", str(out)] + (["--stream"] if scenario.stream else [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        preexec_fn=(lambda: pin_self(load_core)) if load_core is not None else None)
        self._expect(b"ready")

    def _expect(self, word: bytes) -> None:
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != word:
            raise RuntimeError(f"load generator failed against {self.target.name}")

    def run(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()
        self._expect(b"done")
        result: dict[str, Any] = orjson.loads(self.out.read_bytes())
        return result

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(load: Load, fake: Child, proxy_core: int | None) -> tuple[dict[str, Any], float, float, float]:
    """One slice: the load generator's result, and the CPU the proxy, the fake and other
    processes on the proxy's core used meanwhile."""
    proxy = load.target.proxy
    proxy_before = proxy.cpu_seconds() if proxy else 0.0
    fake_before = fake.cpu_seconds()
    core_before = core_busy_seconds(proxy_core)
    result = load.run()
    proxy_cpu = (proxy.cpu_seconds() if proxy else 0.0) - proxy_before
    fake_cpu = fake.cpu_seconds() - fake_before
    others = max(0.0, core_busy_seconds(proxy_core) - core_before - proxy_cpu) if proxy_core is not None else 0.0
    return result, proxy_cpu, fake_cpu, others


def run_scenario(targets: Sequence[Target], scenario: Scenario, fake: Child,
                 cores: tuple[int | None, int | None], slices: int, slice_s: float,
                 totals_of: Callable[[Target], Totals] | None, round_index: int = 0,
                 progress: bool = False) -> None:
    """`slices` slices against each target in turn, adding to `totals_of(target)` (None:
    a warm-up, nothing kept). One load generator per target stays open throughout."""
    proxy_core, load_core = cores
    loads: list[Load] = []
    try:
        for target in targets:
            out = fake.log_path.with_name(f"loadgen-{target.name}.json")
            loads.append(Load(target, scenario, slice_s, out, load_core))
        for _ in range(slices):
            for load in loads:
                result, proxy_cpu, fake_cpu, others = measure(load, fake, proxy_core)
                if totals_of is not None:
                    totals_of(load.target).add(result, proxy_cpu, fake_cpu, others, round_index)
    finally:
        for load in loads:
            load.close()
    if progress and totals_of is not None:
        rates = "  ".join(f"{t.name} {totals_of(t).rps:.0f}/s" for t in targets)
        print(f"  round {round_index + 1} {scenario.name:>10}: {rates} so far", file=sys.stderr, flush=True)


class Fleet(Protocol):
    """Whatever starts the targets of each round (bench.fleet.Fleet)."""

    def start_round(self, index: int) -> list[Target]: ...

    def end_round(self) -> None: ...


def run_rounds(fleet: Fleet, scenarios: Sequence[Scenario], fake: Child,
               cores: tuple[int | None, int | None], rounds: int, slices: int, slice_s: float,
               progress: bool = True) -> dict[tuple[str, str], Totals]:
    """Every scenario, every target, `rounds` times, on targets the fleet starts afresh for
    each round, in `slices` alternating slices of `slice_s` seconds per target and round;
    the target order rotates each round."""
    results: dict[tuple[str, str], Totals] = {}
    for round_index in range(rounds):
        targets = fleet.start_round(round_index)
        try:
            fresh = [t for t in targets if t.proxy is not None or round_index == 0]
            run_scenario(fresh, WARM_UP, fake, cores, 1, 1.0, None)     # pools, caches, first paths
            run_scenario(fresh, WARM_UP_STREAM, fake, cores, 1, 0.5, None)
            shift = round_index % len(targets)
            order = [*targets[shift:], *targets[:shift]]
            for scenario in scenarios:
                def totals_of(target: Target, name: str = scenario.name) -> Totals:
                    return results.setdefault((name, target.name), Totals())
                run_scenario(order, scenario, fake, cores, slices, slice_s, totals_of, round_index,
                             progress)
        finally:
            fleet.end_round()
    return results


WARM_UP = Scenario("warm-up", 16, False)
WARM_UP_STREAM = Scenario("warm-up", 4, True)
