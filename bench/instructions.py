"""`python -m bench.instructions`: machine instructions per request, TruckLLM vs the reference.

CPU time on a shared (virtual) machine moves by ±15% between two processes of the same
code; the number of instructions a request executes does not. Each proxy runs under
valgrind's callgrind with instrumentation off (so start-up runs at near full speed), gets
a warm-up load, and then counts instructions only while a measured load runs. Callgrind
slows the proxy about fifty times, so a few hundred requests are enough.

It counts instructions, not time: cache misses and system calls (the kernel's share) are
not in it. Use it to judge a change to TruckLLM's own code; `make bench` remains the
measure of CPU time. Needs valgrind (`apt-get install valgrind`); without it this says so
and exits 2.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.alone import proxy_alone, run_load
from bench.processes import Child, cores, pin_self

WARM_UP_S = 3.0
START_LIMIT_S = 300.0       # importing pydantic and friends under valgrind takes a while


def instructions_per_request(kind: str, concurrency: int, duration_s: float,
                             stream: bool = False, gap_ms: float = 1.0,
                             edit_config: Callable[[str], str] | None = None,
                             path: str = "/v1/chat/completions", keep: Path | None = None) -> float:
    def callgrind(work: Path) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={work / 'callgrind.out'}", sys.executable, "-m"]

    with proxy_alone(kind, callgrind, start_timeout_s=START_LIMIT_S, gap_ms=gap_ms,
                     edit_config=edit_config) as alone:
        run_load(alone, concurrency, WARM_UP_S, stream, path)
        _callgrind(alone.proxy, "--instr=on")
        _callgrind(alone.proxy, "--zero")
        requests = run_load(alone, concurrency, duration_s, stream, path)
        _callgrind(alone.proxy, "--instr=off")
        _callgrind(alone.proxy, "--dump")
        time.sleep(1.0)         # the dump is written by the proxy process itself
        if keep is not None:    # for callgrind_annotate
            keep.mkdir(parents=True, exist_ok=True)
            for dump in alone.work.glob("callgrind.out*"):
                if dump.stat().st_size:
                    shutil.copy(dump, keep / f"{kind}.{dump.name}")
        return _instructions(alone.work) / requests


def _callgrind(proxy: Child, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(proxy.process.pid)], capture_output=True,
                   check=True, timeout=60)


def _instructions(work: Path) -> int:
    """Instructions counted since the zeroing: the `totals` of the dumps (the file of the
    dump requested and the one written when the process ends, empty by then)."""
    total = 0
    for dump in work.glob("callgrind.out*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of measured load per proxy")
    parser.add_argument("--no-truckllm", action="store_true")
    parser.add_argument("--stream", action="store_true", help="streamed requests (per stream)")
    parser.add_argument("--gap-ms", type=float, default=20.0,
                        help="time between streamed events; long enough that a proxy slowed by "
                             "callgrind still reads them one at a time, so that the count does "
                             "not depend on how many a busy proxy happened to read at once")
    parser.add_argument("--path", default="/v1/chat/completions",
                        help="the API path requested (/v1/responses: the native Responses pass-through)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the callgrind dumps here, as <target>.callgrind.out*")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        raise SystemExit(2)
    pin_self(cores()[1])
    kinds = ("reference",) if args.no_truckllm else ("reference", "truckllm")
    figures = {kind: instructions_per_request(kind, args.concurrency, args.duration, args.stream,
                                              args.gap_ms, path=args.path, keep=args.keep)
               for kind in kinds}
    print("| target | instructions per request | vs reference |\n|---|---:|---:|")
    for kind, count in figures.items():
        ratio = "" if kind == "reference" else f"{count / figures['reference']:.2f}x"
        print(f"| {kind} | {count / 1000:,.0f}k | {ratio} |")
    what = "streams" if args.stream else "requests"
    print(f"\nConcurrency {args.concurrency}, {what} to {args.path}, {args.duration:g} s of load per "
          "proxy under callgrind.")


if __name__ == "__main__":
    main()
