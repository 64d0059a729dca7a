"""Entry point of `make bench` (python -m bench): start the fake upstream, then run rounds
of load, each against the fake, a freshly started reference proxy and a freshly started
TruckLLM in turn; print markdown, optionally write it into docs/performance.md. Traffic
stays on 127.0.0.1; the run is bounded in time."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.calls import count_calls
from bench.fleet import Fleet
from bench.processes import Child, cores, free_port, pin_self, start_child, wait_for_port
from bench.report import RunInfo, render, write_section
from bench.runner import SCENARIOS, run_rounds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds per scenario and target, each on freshly started proxies")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds of load per scenario, target and round")
    parser.add_argument("--slices", type=int, default=4,
                        help="the duration cut into this many slices, alternating between targets")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="time between streamed chunks")
    parser.add_argument("--scenarios", default=",".join(s.name.replace(" ", "-") for s in SCENARIOS),
                        help="comma-separated subset, for quick looks (default: all)")
    parser.add_argument("--no-truckllm", action="store_true", help="measure only direct and reference")
    parser.add_argument("--no-calls", action="store_true",
                        help="skip counting Python calls per request (bench.calls, ~40 s)")
    parser.add_argument("--write", type=Path, help="put the results into this markdown file (e.g. docs/performance.md)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    proxy_core, load_core = cores()
    pin_self(load_core)
    pinned = (f"Proxies pinned to CPU {proxy_core}; load generator and fake upstream to CPU {load_core}."
              if proxy_core is not None else "Single CPU: nothing pinned.")
    started: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="truckllm-bench-") as scratch:
        work = Path(scratch)
        fake_port = free_port()
        fleet = Fleet(work, fake_port, proxy_core, with_truckllm=not args.no_truckllm)
        try:
            fake = start_child("fake", [sys.executable, "-m", "bench.fake_upstream", "--port", str(fake_port),
                                        "--chunks", str(args.chunks), "--gap-ms", str(args.gap_ms)], load_core, work)
            started.append(fake)
            wait_for_port(fake, fake_port)
            began = time.monotonic()
            wanted = set(args.scenarios.replace("-", " ").split(","))
            scenarios = [s for s in SCENARIOS if s.name in wanted]
            results = run_rounds(fleet, scenarios, fake, (proxy_core, load_core), args.rounds,
                                 args.slices, args.duration / args.slices)
            print(f"measured in {time.monotonic() - began:.0f} s", file=sys.stderr)
            rss = {**fleet.peak_rss_mib, "fake upstream": fake.peak_rss_mib()}
        finally:
            fleet.end_round()
            for child in reversed(started):
                child.stop()
    info = RunInfo(
        command=shlex.join(["make", "bench"] if len(sys.argv) == 1 else ["python", "-m", "bench", *sys.argv[1:]]),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rounds=args.rounds,
        duration_s=args.duration, slices=args.slices, pinned=pinned, stream_chunks=args.chunks, gap_ms=args.gap_ms,
        target_names=["direct", *fleet.proxy_names], peak_rss_mib=rss, skipped=fleet.skipped,
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
