"""The proxies of a bench run, started afresh for every round.

One process of the same code costs up to ±15% more or less CPU per request than another
(memory layout, hash seeds, the VM's neighbours), so a figure measured on one process per
target is one sample. Restarting the reference and TruckLLM every round makes each round
a new sample of both, and the pooled figure an average over as many processes as rounds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Child, free_port, start_child, wait_for_port
from bench.runner import Target
from bench.targets import (
    ALIAS,
    CLIENT_KEY,
    UPSTREAM_MODEL,
    check_answers,
    truckllm_command,
    truckllm_config,
)

# Starts one proxy for round N: its process and the target that reaches it.
Starter = Callable[[int], tuple[Child, Target]]


@dataclass
class Fleet:
    """The direct target (the fake itself) and the proxies, restarted each round.

    A proxy that fails to start in the first round is left out of the whole run (and
    `skipped` says why); one that fails in a later round stops the run.
    """

    work: Path
    fake_port: int
    proxy_core: int | None
    with_truckllm: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)    # highest over the rounds
    proxy_names: list[str] = field(default_factory=list)    # those that started in round 1
    _running: list[Child] = field(default_factory=list)

    def start_round(self, index: int) -> list[Target]:
        """The targets of round `index` (0-based): direct first, then fresh proxies."""
        targets = [Target("direct", self.fake_port, "none", UPSTREAM_MODEL, None)]
        for name, starter in self._starters():
            if index > 0 and name not in self.proxy_names:
                continue
            target = self._start(name, starter, index)
            if target is not None:
                targets.append(target)
        if index == 0:
            self.proxy_names = [t.name for t in targets[1:]]
            if "reference" not in self.proxy_names:
                raise SystemExit("the reference proxy did not start; nothing to compare against")
        return targets

    def end_round(self) -> None:
        """Note each proxy's peak RSS and stop it."""
        for child in self._running:
            if child.process.poll() is None:
                rss = child.peak_rss_mib()
                self.peak_rss_mib[child.name] = max(rss, self.peak_rss_mib.get(child.name, 0.0))
            child.stop()
        self._running.clear()

    def _starters(self) -> list[tuple[str, Starter]]:
        if not self.with_truckllm:
            self.skipped.setdefault("truckllm", "--no-truckllm given")
            return [("reference", self._reference)]
        return [("reference", self._reference), ("truckllm", self._truckllm)]

    def _start(self, name: str, starter: Starter, index: int) -> Target | None:
        try:
            child, target = starter(index)
        except (RuntimeError, OSError) as error:
            self._failed(name, index, str(error).splitlines()[0], "")
            return None
        self._running.append(child)
        try:
            wait_for_port(child, target.port)
            check_answers(target.port, target.key, target.model)
        except (RuntimeError, OSError) as error:
            why = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self._failed(name, index, why, child.log_tail())
            return None
        return target

    def _failed(self, name: str, index: int, why: str, log_tail: str) -> None:
        print(f"{name}: not measured: {why}\n{log_tail}", file=sys.stderr)
        if index > 0:
            raise SystemExit(f"{name} did not start again in round {index + 1}: {why}")
        self.skipped[name] = why

    def _reference(self, index: int) -> tuple[Child, Target]:
        port = free_port()
        child = start_child("reference", [sys.executable, "-m", "bench.reference_proxy", "--port", str(port),
                                          "--upstream", f"http://127.0.0.1:{self.fake_port}"],
                            self.proxy_core, self.work, log_name=f"reference-{index + 1}")
        return child, Target("reference", port, "none", UPSTREAM_MODEL, child)

    def _truckllm(self, index: int) -> tuple[Child, Target]:
        port = free_port()
        # A directory of its own: TruckLLM watches the config's directory, and the logs
        # written into `work` would wake its watcher thread on every line.
        directory = self.work / f"config-{index + 1}"
        directory.mkdir()
        config = directory / "bench.yaml"
        config.write_text(truckllm_config(port, self.fake_port))
        child = start_child("truckllm", truckllm_command(config, port), self.proxy_core, self.work,
                            log_name=f"truckllm-{index + 1}")
        return child, Target("truckllm", port, CLIENT_KEY, ALIAS, child)
