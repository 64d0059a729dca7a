"""`python -m bench.calls`: Python function calls per request, TruckLLM vs the reference.

CPU time on a shared machine moves by ±20% from run to run; the number of Python-level
function calls a request costs does not, and in CPython it tracks CPU time closely. Each
proxy runs under cProfile twice, with a short and a long load; the difference divided by
the difference in requests removes start-up and shutdown. Also lists which of
TruckLLM's modules (and libraries) the calls are spent in.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.alone import proxy_alone, run_load
from bench.processes import cores, pin_self

SHORT_S, LONG_S = 0.3, 3.0


def profile_once(kind: str, duration_s: float, stream: bool) -> tuple[int, pstats.Stats]:
    """Requests answered and the cProfile stats of one proxy process under load."""
    # Streams at concurrency 1: at 16 a busy proxy reads several events at once, and the
    # count would depend on how busy it was.
    def profiled(work: Path) -> list[str]:
        return [sys.executable, "-m", "bench.profiled", str(work / "proxy.prof")]

    with proxy_alone(kind, profiled) as alone:
        requests = run_load(alone, 1 if stream else 16, duration_s, stream) + 1  # + check_answers
        alone.proxy.stop()          # the profile is written when the process ends
        return requests, pstats.Stats(str(alone.work / "proxy.prof"))


def calls_by_origin(stats: pstats.Stats) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (filename, _, _), (_, calls, *_) in stats.stats.items():  # type: ignore[attr-defined]
        counts[origin(filename)] += calls
    return counts


def origin(filename: str) -> str:
    if "/truckllm/" in filename:
        return "truckllm/" + filename.rsplit("/truckllm/", 1)[1]
    if "site-packages/" in filename:
        return filename.rsplit("site-packages/", 1)[1].split("/", 1)[0]
    if filename == "~":
        return "(C built-ins)"
    return "stdlib " + filename.rsplit("/", 1)[-1]


def per_request(kind: str, stream: bool) -> tuple[float, Counter[str]]:
    short_n, short = profile_once(kind, SHORT_S, stream)
    long_n, long = profile_once(kind, LONG_S, stream)
    requests = long_n - short_n
    short_by, long_by = calls_by_origin(short), calls_by_origin(long)
    by_origin = Counter({name: (long_by[name] - short_by[name]) / requests for name in long_by})
    return sum(by_origin.values()), by_origin


def render(rows: Sequence[tuple[str, float, float]], truckllm_origins: Counter[str]) -> str:
    lines = ["| target | Python calls per request | per stream (24 events, concurrency 1) |", "|---|---:|---:|"]
    reference = {name: (plain, stream) for name, plain, stream in rows}.get("reference")
    for name, plain, stream in rows:
        ratio = f" ({plain / reference[0]:.2f}x)" if reference and name != "reference" else ""
        stream_ratio = f" ({stream / reference[1]:.2f}x)" if reference and name != "reference" else ""
        lines.append(f"| {name} | {plain:.0f}{ratio} | {stream:.0f}{stream_ratio} |")
    lines += ["", "Requests at concurrency 16, streams at concurrency 1 (so that every event "
              "arrives in a read of its own: busier proxies read several at once and count fewer).", "",
              "TruckLLM's calls per non-streaming request, by where they are spent:", "",
              "| module or library | calls |", "|---|---:|"]
    lines += [f"| {name} | {count:.0f} |" for name, count in truckllm_origins.most_common(25) if count >= 0.5]
    return "\n".join(lines) + "\n"


def count_calls(truckllm: bool = True) -> str:
    """The markdown tables: calls per request and per stream, and TruckLLM's by module."""
    rows = []
    origins: Counter[str] = Counter()
    for kind in ("reference", "truckllm") if truckllm else ("reference",):
        plain, by_origin = per_request(kind, stream=False)
        stream, _ = per_request(kind, stream=True)
        rows.append((kind, plain, stream))
        if kind == "truckllm":
            origins = by_origin
        print(f"  {kind}: {plain:.0f} calls per request, {stream:.0f} per stream", file=sys.stderr)
    return render(rows, origins)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__)
    parser.add_argument("--no-truckllm", action="store_true")
    args = parser.parse_args()
    pin_self(cores()[1])
    print(count_calls(truckllm=not args.no_truckllm))


if __name__ == "__main__":
    main()
