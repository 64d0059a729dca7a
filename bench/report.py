"""The benchmark's results as markdown: machine, tables, ratios, targets, sanity checks.
Pure formatting of what bench.runner measured."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.runner import CHAT_PATH, SCENARIOS, Totals, percentile

CPU_RATIO_TARGET = 1.5
ADDED_P50_TARGET_MS = 1.0
FIRST_CHUNK_TARGET_MS = 1.0
STREAM_CPU_RATIO_TARGET = 1.3     # CPU per stream, at concurrency 16
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

Results = Mapping[tuple[str, str], Totals]
CHAT_SCENARIOS = tuple(s for s in SCENARIOS if s.path == CHAT_PATH)
RESPONSES_SCENARIOS = tuple(s for s in SCENARIOS if s.path != CHAT_PATH)


@dataclass(frozen=True)
class RunInfo:
    command: str
    date: str
    rounds: int
    duration_s: float               # per scenario, target and round
    slices: int                     # that duration cut into this many alternating slices
    pinned: str
    stream_chunks: int
    gap_ms: float
    target_names: Sequence[str]
    peak_rss_mib: Mapping[str, float]
    skipped: Mapping[str, str]          # target name -> why it did not run


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break

    versions = ", ".join(f"{name} {_version(name)}" for name in ("aiohttp", "uvloop", "orjson"))
    return (f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {versions}")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def render(results: Results, info: RunInfo, calls: str | None = None) -> str:
    parts = [
        BEGIN,
        f"Command: `{info.command}` — {info.date}",
        "",
        f"Machine: {machine()}. {info.pinned} Each figure pools {info.rounds} rounds of "
        f"{info.duration_s:g} s per scenario and target, in {info.slices} slices alternating "
        f"between the targets, the proxies started afresh for every round.",
        "",
        *_skipped(info),
        *_disturbance(results, info),
        "### Non-streaming chat completions",
        "",
        *_plain_table(results, info),
        "",
        f"### Streaming ({info.stream_chunks} content chunks, {info.gap_ms:g} ms apart, plus role, finish and usage chunks)",
        "",
        *_stream_table(results, info),
        "",
        "### Responses API (`POST /v1/responses`)",
        "",
        *_responses_table(results, info),
        "",
        "### Peak RSS",
        "",
        *_rss_table(info),
        "",
        "### Targets",
        "",
        *_verdicts(results, info),
        "",
        "### Is the fake upstream ever the bottleneck?",
        "",
        *_sanity(results, info),
        *(["", "### Python function calls (`python -m bench.calls`)", "", calls.rstrip("\n")]
          if calls else []),
        END,
    ]
    return "\n".join(parts) + "\n"


def _skipped(info: RunInfo) -> list[str]:
    return [f"**{name} not measured:** {why}\n" for name, why in info.skipped.items()]


DISTURBED = 0.10     # other processes' share of the proxy core above which a run is flagged


def _disturbance(results: Results, info: RunInfo) -> list[str]:
    proxied = [t for (_, name), t in results.items() if name != "direct"]
    if not proxied or "CPU" not in info.pinned:
        return []
    worst = max(t.disturbance() for t in proxied)
    average = sum(t.others_on_proxy_core_s for t in proxied) / sum(t.wall_s for t in proxied)
    line = (f"Other processes used {average:.0%} of the proxy core on average during the "
            f"proxied runs (at worst {worst:.0%} in one scenario).")
    if worst > DISTURBED:
        line += (" **This run was disturbed:** latencies and req/s are not representative; "
                 "CPU µs per request holds up better. Re-run on a quiet machine.")
    return [line, ""]


def _plain_table(results: Results, info: RunInfo) -> list[str]:
    rows = ["| conc. | target | req/s | p50 ms | p99 ms | added p50 ms | proxy CPU µs/req | CPU vs reference | rounds' range | errors |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in (s for s in CHAT_SCENARIOS if not s.stream):
        direct = results.get((scenario.name, "direct"))
        reference = results.get((scenario.name, "reference"))
        for name in info.target_names:
            totals = results.get((scenario.name, name))
            if totals is None:
                continue
            p50 = percentile(totals.latency_ms, 0.5)
            added = p50 - percentile(direct.latency_ms, 0.5) if direct and name != "direct" else float("nan")
            cpu = totals.proxy_cpu_us() if name != "direct" else float("nan")
            compared = reference if name == "truckllm" else None
            ratio = _ratio(cpu, compared.proxy_cpu_us()) if compared else ""
            spread = _round_range(totals, compared) if compared else ""
            rows.append(f"| {scenario.concurrency} | {name} | {totals.rps:,.0f} | {_fmt(p50)} | "
                        f"{_fmt(percentile(totals.latency_ms, 0.99))} | {_fmt(added)} | {_fmt(cpu, 0)} | "
                        f"{ratio} | {spread} | {totals.errors} |")
    return rows


def round_ratios(ours: Totals, reference: Totals) -> list[float]:
    """CPU per request against the reference's, round by round (each round: fresh processes)."""
    rounds = zip(ours.round_cpu_s, ours.round_requests, reference.round_cpu_s, reference.round_requests,
                 strict=False)
    return [(cpu / requests) / (ref_cpu / ref_requests)
            for cpu, requests, ref_cpu, ref_requests in rounds if requests and ref_requests and ref_cpu]


def _round_range(ours: Totals, reference: Totals) -> str:
    ratios = round_ratios(ours, reference)
    if len(ratios) < 2:
        return "-"
    return f"{min(ratios):.2f} to {max(ratios):.2f}x"


def _stream_table(results: Results, info: RunInfo) -> list[str]:
    rows = ["| conc. | target | streams/s | first chunk p50 ms | first chunk p99 ms | vs reference ms | total p50 ms | total p99 ms | proxy CPU µs/stream | errors |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in (s for s in CHAT_SCENARIOS if s.stream):
        reference = results.get((scenario.name, "reference"))
        for name in info.target_names:
            totals = results.get((scenario.name, name))
            if totals is None:
                continue
            first = percentile(totals.first_chunk_ms, 0.5)
            versus = (first - percentile(reference.first_chunk_ms, 0.5)
                      if reference and name == "truckllm" else float("nan"))
            cpu = totals.proxy_cpu_us() if name != "direct" else float("nan")
            rows.append(f"| {scenario.concurrency} | {name} | {totals.rps:,.0f} | {_fmt(first)} | "
                        f"{_fmt(percentile(totals.first_chunk_ms, 0.99))} | {_fmt(versus)} | "
                        f"{_fmt(percentile(totals.latency_ms, 0.5))} | {_fmt(percentile(totals.latency_ms, 0.99))} | "
                        f"{_fmt(cpu, 0)} | {totals.errors} |")
    return rows


def _responses_table(results: Results, info: RunInfo) -> list[str]:
    """Native pass-through (TruckLLM forwards to the fake's /responses) against the
    reference, and the stream translated through chat, whose CPU per event the client
    receives is set beside a chat stream's."""
    rows = ["| scenario | target | req/s | p50 ms | proxy CPU µs/req | CPU vs reference | events/stream | proxy CPU µs/event | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    chat_events = info.stream_chunks + 3          # role, content chunks, finish, usage
    responses_events = info.stream_chunks + 8     # created ... completed around the deltas
    for scenario in (*RESPONSES_SCENARIOS, *(s for s in CHAT_SCENARIOS if s.name == "stream c16")):
        reference = results.get((scenario.name, "reference"))
        events = (responses_events if scenario.path != CHAT_PATH else chat_events) if scenario.stream else 1
        for name in info.target_names:
            totals = results.get((scenario.name, name))
            if totals is None or name == "direct":
                continue
            cpu = totals.proxy_cpu_us()
            ratio = _ratio(cpu, reference.proxy_cpu_us()) if reference and name == "truckllm" else ""
            rows.append(f"| {scenario.name} | {name} | {totals.rps:,.0f} | "
                        f"{_fmt(percentile(totals.latency_ms, 0.5))} | {_fmt(cpu, 0)} | {ratio} | "
                        f"{events if scenario.stream else '-'} | "
                        f"{_fmt(cpu / events, 1) if scenario.stream else '-'} | {totals.errors} |")
    rows += ["", "`responses c16` and `responses stream c16` pass the request through to the fake's "
             "/responses, like the reference; `responses via chat stream c16` is translated by "
             "TruckLLM into a chat stream and back (the reference still forwards /responses), so "
             "its CPU per event is the figure to compare with `stream c16`'s."]
    return rows


def _rss_table(info: RunInfo) -> list[str]:
    rows = ["| process | peak RSS MiB |", "|---|---:|"]
    rows += [f"| {name} | {rss:.1f} |" for name, rss in info.peak_rss_mib.items()]
    return rows


def _verdicts(results: Results, info: RunInfo) -> list[str]:
    if "truckllm" not in info.target_names:
        return ["TruckLLM was not measured in this run."]
    if any((s.name, n) not in results for s in CHAT_SCENARIOS for n in ("truckllm", "reference", "direct")):
        return ["Not every scenario ran: no verdict."]
    lines = []
    ratios = []
    rounds_over = rounds = 0
    for scenario in (s for s in CHAT_SCENARIOS if not s.stream):
        ours, reference = results[(scenario.name, "truckllm")], results[(scenario.name, "reference")]
        ratios.append((scenario.concurrency, ours.proxy_cpu_us() / reference.proxy_cpu_us()))
        each = round_ratios(ours, reference)
        rounds += len(each)
        rounds_over += sum(ratio > CPU_RATIO_TARGET for ratio in each)
    worst = max(ratio for _, ratio in ratios)
    listed = ", ".join(f"{ratio:.2f}x at {conc}" for conc, ratio in ratios)
    lines.append(f"- CPU per request within {CPU_RATIO_TARGET}x the reference: {_mark(worst <= CPU_RATIO_TARGET)} "
                 f"({listed}; pooled over the rounds. Single rounds over {CPU_RATIO_TARGET}x: "
                 f"{rounds_over} of {rounds})")
    added = (percentile(results[("c1", "truckllm")].latency_ms, 0.5)
             - percentile(results[("c1", "direct")].latency_ms, 0.5))
    lines.append(f"- Added p50 latency at concurrency 1 under {ADDED_P50_TARGET_MS:g} ms: "
                 f"{_mark(added < ADDED_P50_TARGET_MS)} ({added:.2f} ms)")
    first = (percentile(results[("stream c1", "truckllm")].first_chunk_ms, 0.5)
             - percentile(results[("stream c1", "reference")].first_chunk_ms, 0.5))
    lines.append(f"- First streamed chunk within {FIRST_CHUNK_TARGET_MS:g} ms of the reference (concurrency 1): "
                 f"{_mark(first < FIRST_CHUNK_TARGET_MS)} ({first:+.2f} ms)")
    streams = (results[("stream c16", "truckllm")].proxy_cpu_us()
               / results[("stream c16", "reference")].proxy_cpu_us())
    lines.append(f"- CPU per stream within {STREAM_CPU_RATIO_TARGET}x the reference (concurrency 16): "
                 f"{_mark(streams <= STREAM_CPU_RATIO_TARGET)} ({streams:.2f}x)")
    return lines


def _mark(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _sanity(results: Results, info: RunInfo) -> list[str]:
    direct = results.get(("c64", "direct"))
    if direct is None:
        return ["Direct runs missing."]
    lines = [f"- Fake upstream alone: {direct.rps:,.0f} req/s at concurrency 64, "
             f"{_fmt(direct.fake_cpu_us(), 0)} µs CPU per request (it shares the load core with the load generator)."]
    for name in (n for n in info.target_names if n != "direct"):
        totals = results.get(("c64", name))
        if totals is None:
            continue
        lines.append(
            f"- {name} at concurrency 64: {totals.rps:,.0f} req/s = {direct.rps / totals.rps:.1f}x less than direct; "
            f"proxy core {totals.proxy_core_busy():.0%} busy, load core (load generator + fake) "
            f"{totals.load_core_busy():.0%} busy; fake {_fmt(totals.fake_cpu_us(), 0)} µs CPU per request."
        )
    lines.append("- The proxy is the bottleneck when its core is near 100% and the load core is not.")
    return lines


def write_section(path: Path, section: str) -> None:
    """Replace the text between the bench markers in `path`, or append it."""
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
