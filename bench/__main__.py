"""Entry point of `make bench` (python -m bench): start the fake upstream, the reference
proxy and TruckLLM, run alternating rounds of load, print markdown, optionally write it
into docs/performance.md. Traffic stays on 127.0.0.1; the run is bounded in time."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.calls import count_calls
from bench.processes import Child, cores, free_port, pin_self, start_child, wait_for_port
from bench.report import RunInfo, render, write_section
from bench.runner import SCENARIOS, Target, run_rounds
from bench.targets import (
    ALIAS,
    CLIENT_KEY,
    UPSTREAM_MODEL,
    check_answers,
    truckllm_command,
    truckllm_config,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per scenario and target")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="time between streamed chunks")
    parser.add_argument("--scenarios", default=",".join(s.name.replace(" ", "-") for s in SCENARIOS),
                        help="comma-separated subset, for quick looks (default: all)")
    parser.add_argument("--no-truckllm", action="store_true", help="measure only direct and reference")
    parser.add_argument("--no-calls", action="store_true",
                        help="skip counting Python calls per request (bench.calls, ~40 s)")
    parser.add_argument("--write", type=Path, help="put the results into this markdown file (e.g. docs/performance.md)")
    return parser.parse_args()


def start_target(name: str, make: Callable[[], tuple[Child, Target]], started: list[Child],
                 skipped: dict[str, str]) -> Target | None:
    try:
        child, target = make()
    except (RuntimeError, OSError) as error:
        skipped[name] = str(error).splitlines()[0]
        print(f"{name}: not measured: {error}", file=sys.stderr)
        return None
    started.append(child)
    try:
        wait_for_port(child, target.port)
        check_answers(target.port, target.key, target.model)
    except (RuntimeError, OSError) as error:
        skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"{name}: not measured: {error}\n{child.log_tail()}", file=sys.stderr)
        child.stop()
        return None
    return target


def main() -> None:
    args = parse_args()
    proxy_core, load_core = cores()
    pin_self(load_core)
    pinned = (f"Proxies pinned to CPU {proxy_core}; load generator and fake upstream to CPU {load_core}."
              if proxy_core is not None else "Single CPU: nothing pinned.")
    started: list[Child] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="truckllm-bench-") as scratch:
        work = Path(scratch)
        try:
            fake_port = free_port()
            fake = start_child("fake", [sys.executable, "-m", "bench.fake_upstream", "--port", str(fake_port),
                                        "--chunks", str(args.chunks), "--gap-ms", str(args.gap_ms)], load_core, work)
            started.append(fake)
            wait_for_port(fake, fake_port)
            targets = [Target("direct", fake_port, "none", UPSTREAM_MODEL, None)]

            def make_reference() -> tuple[Child, Target]:
                port = free_port()
                child = start_child("reference", [sys.executable, "-m", "bench.reference_proxy", "--port", str(port),
                                                  "--upstream", f"http://127.0.0.1:{fake_port}"], proxy_core, work)
                return child, Target("reference", port, "none", UPSTREAM_MODEL, child)

            def make_truckllm() -> tuple[Child, Target]:
                port = free_port()
                # A directory of its own: TruckLLM watches the config's directory, and the
                # logs written into `work` would wake its watcher thread on every line.
                (work / "config").mkdir()
                config = work / "config" / "bench.yaml"
                config.write_text(truckllm_config(port, fake_port))
                child = start_child("truckllm", truckllm_command(config, port), proxy_core, work)
                return child, Target("truckllm", port, CLIENT_KEY, ALIAS, child)

            for name, make in (("reference", make_reference), ("truckllm", make_truckllm)):
                if name == "truckllm" and args.no_truckllm:
                    skipped[name] = "--no-truckllm given"
                    continue
                target = start_target(name, make, started, skipped)
                if target is not None:
                    targets.append(target)
            if not any(t.name == "reference" for t in targets):
                raise SystemExit("the reference proxy did not start; nothing to compare against")

            began = time.monotonic()
            wanted = set(args.scenarios.replace("-", " ").split(","))
            scenarios = [s for s in SCENARIOS if s.name in wanted]
            results = run_rounds(targets, scenarios, fake, (proxy_core, load_core), args.rounds, args.duration)
            print(f"measured in {time.monotonic() - began:.0f} s", file=sys.stderr)
            rss = {t.name: t.proxy.peak_rss_mib() for t in targets if t.proxy is not None}
            rss["fake upstream"] = fake.peak_rss_mib()
        finally:
            for child in reversed(started):
                child.stop()
    info = RunInfo(
        command=shlex.join(["make", "bench"] if len(sys.argv) == 1 else ["python", "-m", "bench", *sys.argv[1:]]),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rounds=args.rounds,
        duration_s=args.duration, pinned=pinned, stream_chunks=args.chunks, gap_ms=args.gap_ms,
        target_names=[t.name for t in targets], peak_rss_mib=rss, skipped=skipped,
    )
    calls = None
    if not args.no_calls:
        print("counting Python calls per request (bench.calls)...", file=sys.stderr, flush=True)
        calls = count_calls(truckllm="truckllm" in info.target_names)
    section = render(results, info, calls)
    print(section)
    if args.write:
        write_section(args.write, section)
        print(f"written to {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
