"""`make stress` (python -m bench.stress): a bounded robustness run of a real `truckllm serve`
in front of the benchmark's fake upstream, on 127.0.0.1 only.

Three phases, each bounded in count and time:

1. soak: clients sending plain and streamed chat completions for `--soak-s` seconds;
2. connection abuse, while a probe client keeps sending requests: idle connections,
   slowloris headers, request bodies that never end, 16 KB headers, non-HTTP bytes, and
   more connections than `server.max_connections`;
3. disconnect storm: streams whose clients leave after the first event.

It reports the gateway's RSS and open file descriptors before and after each phase,
errors, what the abusive connections got, and latency (the probe's during the abuse),
as markdown; `--write docs/reliability.md` puts the table between the markers there.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.processes import Child, free_port, start_child, wait_for_port

KEY = "tk-stress-client-key"
CHAT = b'{"model": "gpt", "messages": [{"role": "user", "content": "hello"}]}'
STREAM = b'{"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "hello"}]}'
BEGIN, END = "<!-- stress:begin -->", "<!-- stress:end -->"
CONFIG = """\
version: 1
server:
  port: {port}
  log_level: warning
  keepalive_timeout_s: {keepalive}
  body_timeout_s: {body_timeout}
  max_connections: {max_connections}
  watch: false
providers:
  - id: up
    type: openai
    base_url: http://127.0.0.1:{upstream}/v1
    keys: [{{id: k1, value: sk-stress-upstream-key}}]
models:
  - alias: gpt
    targets: [{{provider: up, model: gpt-4o-mini}}]
keys:
  - {{id: stress, key: {key}}}
"""


@dataclass
class Snapshot:
    rss_mib: float
    fds: int


@dataclass
class Phase:
    name: str
    before: Snapshot
    after: Snapshot | None = None
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def snapshot(child: Child) -> Snapshot:
    rss = 0.0
    for line in Path(f"/proc/{child.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return Snapshot(rss, len(os.listdir(f"/proc/{child.process.pid}/fd")))


def head(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


async def one_request(http: aiohttp.ClientSession, url: str, stream: bool, phase: Phase) -> None:
    started = time.perf_counter()
    try:
        async with http.post(url, data=STREAM if stream else CHAT,
                             headers={"Authorization": f"Bearer {KEY}",
                                      "Content-Type": "application/json"}) as response:
            body = await response.read()
            ok = response.status == 200 and (not stream or body.endswith(b"data: [DONE]\n\n"))
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    phase.requests += 1
    phase.errors += not ok
    phase.latencies_ms.append((time.perf_counter() - started) * 1000)


async def clients(url: str, count: int, until: float, phase: Phase, pause_s: float = 0.0) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async def client(index: int) -> None:
            turn = index
            while time.monotonic() < until:
                await one_request(http, url, stream=turn % 2 == 1, phase=phase)
                turn += 1
                if pause_s:
                    await asyncio.sleep(pause_s)
        await asyncio.gather(*(client(i) for i in range(count)))


async def soak(child: Child, port: int, args: argparse.Namespace) -> Phase:
    phase = Phase("soak", snapshot(child))
    started = time.monotonic()
    await clients(f"http://127.0.0.1:{port}/v1/chat/completions", args.clients,
                  started + args.soak_s, phase)
    phase.seconds = time.monotonic() - started
    phase.after = snapshot(child)
    return phase


async def read_answer(reader: asyncio.StreamReader, within_s: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(4096), within_s)
    except (TimeoutError, ConnectionError):
        return b""


async def abuse(child: Child, port: int, args: argparse.Namespace) -> Phase:
    """Abusive connections, then a probe measuring what a normal client sees meanwhile."""
    phase = Phase("connection abuse", snapshot(child))
    started = time.monotonic()
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pair = await asyncio.open_connection("127.0.0.1", port)
        opened.append(pair)
        return pair

    idle = [await connect() for _ in range(args.idle)]
    slow = [await connect() for _ in range(args.slow)]
    for _, writer in slow:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    endless = [await connect() for _ in range(args.slow)]
    for _, writer in endless:
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                     f"Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n".encode())
    oversized = [await connect() for _ in range(args.bad)]
    for _, writer in oversized:
        writer.write(head("/v1/chat/completions", CHAT, f"X-Big: {'x' * 16384}\r\n"))
    garbage = [await connect() for _ in range(args.bad)]
    for _, writer in garbage:
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n")
    bad_answers = await asyncio.gather(*(read_answer(r, 5) for r, _ in oversized + garbage))
    json_errors = sum(b"application/json" in a and (b" 431 " in a[:16] or b" 400 " in a[:16])
                      for a in bad_answers)
    phase.notes.append(f"{json_errors} of {len(bad_answers)} oversized-header and non-HTTP "
                       "requests answered with a JSON 431/400")
    # Up to the cap with idle connections, then some past it: those are answered 503.
    held = len(idle) + len(slow) + len(endless)
    fill = [await connect() for _ in range(max(0, args.max_connections - held))]
    await asyncio.sleep(0.5)                            # all accepted by now
    over = [await connect() for _ in range(args.bad)]
    for _, writer in over:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    over_answers = await asyncio.gather(*(read_answer(r, 5) for r, _ in over))
    refused = sum(a.startswith(b"HTTP/1.1 503") and b"too_many_connections" in a
                  for a in over_answers)
    phase.notes.append(f"{held + len(fill)} connections held; {refused} of {len(over)} more "
                       f"(past max_connections) answered 503 at once")
    for _, writer in over + fill:
        writer.close()
    await asyncio.sleep(0.5)

    # The probe: a few clients sending requests while the abusive connections stay open
    # (the over-cap ones are gone, so there is room again).
    probe = Phase("probe", phase.before)
    probe_until = time.monotonic() + args.abuse_s
    await clients(f"http://127.0.0.1:{port}/v1/chat/completions", 4, probe_until, probe,
                  pause_s=0.01)
    phase.requests, phase.errors, phase.latencies_ms = (probe.requests, probe.errors,
                                                        probe.latencies_ms)
    endless_answers = await asyncio.gather(*(read_answer(r, args.body_timeout + 5)
                                             for r, _ in endless))
    timed_out = sum(a.startswith(b"HTTP/1.1 408") for a in endless_answers)
    phase.notes.append(f"{timed_out} of {len(endless)} never-ending bodies answered 408 "
                       f"(body_timeout_s {args.body_timeout:g})")
    closed = await asyncio.gather(*(read_answer(r, args.keepalive + 10) for r, _ in idle + slow))
    phase.notes.append(f"{sum(a == b'' for a in closed)} of {len(idle) + len(slow)} idle and "
                       f"slowloris connections closed by the gateway "
                       f"(keepalive_timeout_s {args.keepalive:g})")
    for _, writer in opened:
        writer.close()
    await asyncio.sleep(1)
    phase.seconds = time.monotonic() - started
    phase.after = snapshot(child)
    return phase


async def disconnect_storm(child: Child, port: int, args: argparse.Namespace) -> Phase:
    phase = Phase("disconnect storm", snapshot(child))
    started = time.monotonic()

    async def leave_after_first_event() -> None:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head("/v1/chat/completions", STREAM))
            first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
            first += await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)    # the first event
            phase.latencies_ms.append((time.perf_counter() - started) * 1000)
            phase.errors += not (first.startswith(b"HTTP/1.1 200") and b"data: " in first)
            writer.transport.abort()                   # gone mid-stream, no goodbye
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            phase.errors += 1
        phase.requests += 1

    for start in range(0, args.storm, 50):
        await asyncio.gather(*(leave_after_first_event() for _ in range(min(50, args.storm - start))))
    async with aiohttp.ClientSession() as http:
        for _ in range(100):                           # in-flight back to 0, bounded wait
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            inflight = next((line.split()[-1] for line in text.splitlines()
                             if line.startswith("llm_inflight_requests ")), "?")
            if inflight in ("0", "0.0"):
                break
            await asyncio.sleep(0.1)
    phase.notes.append(f"requests in flight after the storm: {inflight}")
    phase.seconds = time.monotonic() - started
    phase.after = snapshot(child)
    return phase


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def render(phases: list[Phase], args: argparse.Namespace) -> str:
    lines = [
        f"Run of `make stress` ({time.strftime('%Y-%m-%d', time.gmtime())}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores shared with other work; "
        f"max_connections {args.max_connections}, keepalive_timeout_s {args.keepalive:g}, "
        f"body_timeout_s {args.body_timeout:g}):",
        "",
        "| phase | time | requests | errors | p50 ms | p99 ms | RSS MiB before → after "
        "| open fds before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        after = phase.after or phase.before
        lines.append(
            f"| {phase.name} | {phase.seconds:.1f} s | {phase.requests} | {phase.errors} | "
            f"{percentile(phase.latencies_ms, 0.5):.1f} | {percentile(phase.latencies_ms, 0.99):.1f} | "
            f"{phase.before.rss_mib:.1f} → {after.rss_mib:.1f} | {phase.before.fds} → {after.fds} |")
    lines.append("")
    lines += [f"- {phase.name}: {note}" for phase in phases for note in phase.notes]
    lines.append("- connection abuse: latency is the probe's (4 clients, plain and streamed "
                 "requests) while the abusive connections were open; disconnect storm: time "
                 "to the first event, 50 streams at a time. A streamed answer takes about "
                 "45 ms by the fake upstream's pacing (20 events 2 ms apart), which sets the "
                 "latencies more than the gateway does.")
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    doc = path.read_text()
    before, _, rest = doc.partition(BEGIN)
    _, _, after = rest.partition(END)
    path.write_text(f"{before}{BEGIN}\n{text}{END}{after}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak-s", type=float, default=20, help="seconds of soak load")
    parser.add_argument("--clients", type=int, default=16, help="concurrent soak clients")
    parser.add_argument("--abuse-s", type=float, default=10, help="seconds the probe runs")
    parser.add_argument("--idle", type=int, default=150, help="idle connections opened")
    parser.add_argument("--slow", type=int, default=50,
                        help="slowloris connections, and as many never-ending bodies")
    parser.add_argument("--bad", type=int, default=25,
                        help="16 KB-header requests, and as many non-HTTP ones")
    parser.add_argument("--storm", type=int, default=500, help="streams cut after one event")
    parser.add_argument("--max-connections", type=int, default=400)
    parser.add_argument("--keepalive", type=float, default=5, help="server.keepalive_timeout_s")
    parser.add_argument("--body-timeout", type=float, default=5, help="server.body_timeout_s")
    parser.add_argument("--write", type=Path, help="put the table into this markdown file")
    return parser.parse_args()


async def run(child: Child, port: int, args: argparse.Namespace) -> list[Phase]:
    return [await soak(child, port, args), await abuse(child, port, args),
            await disconnect_storm(child, port, args)]


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="truckllm-stress-") as directory:
        work = Path(directory)
        upstream_port, port = free_port(), free_port()
        config = work / "stress.yaml"
        config.write_text(CONFIG.format(port=port, upstream=upstream_port, key=KEY,
                                        keepalive=args.keepalive, body_timeout=args.body_timeout,
                                        max_connections=args.max_connections))
        upstream = start_child("fake upstream", [sys.executable, "-m", "bench.fake_upstream",
                                                 "--port", str(upstream_port), "--chunks", "20",
                                                 "--gap-ms", "2"], None, work)
        gateway: Child | None = None
        try:
            wait_for_port(upstream, upstream_port)
            gateway = start_child("truckllm", [sys.executable, "-m", "truckllm", "serve", "-c",
                                               str(config)], None, work)
            wait_for_port(gateway, port)
            phases = asyncio.run(run(gateway, port, args))
            if gateway.process.poll() is not None:
                raise RuntimeError(f"truckllm exited during the run:\n{gateway.log_tail()}")
        finally:
            if gateway is not None:
                gateway.stop()
            upstream.stop()
    text = render(phases, args)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
