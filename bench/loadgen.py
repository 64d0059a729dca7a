"""The benchmark's load generator: raw HTTP/1.1 keep-alive connections on uvloop.

Opens `--concurrency` connections and prints `ready`. Then, for every `go` line on stdin,
one run: each connection sends requests back to back for `--duration` seconds; a request
still open 10 s after that counts as an error (code -1) and is abandoned, so a run always
ends. After each run it writes one JSON object to `--out` (requests, errors, wall and own
CPU seconds, latency and time-to-first-body-byte samples in ms) and prints `done`; the
connections stay open for the next run. Any other line, or the end of stdin, ends it. Speaks just enough HTTP to read Content-Length and chunked answers, which keeps its
own CPU per request far below the proxies'. Imports nothing from truckllm.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import cast

import orjson
import uvloop

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
STUCK_GRACE_S = 10.0      # after the run's end, how long the last requests may take
CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)


class Connection(asyncio.Protocol):
    """Sends one request at a time and resolves a future with (status, first_body_time)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, float]] | None = None
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.header_done = False
        self.length = -1             # Content-Length, or -1 when chunked
        self.first_body_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, float]]:
        assert self.transport is not None
        self.reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.header_done and not self.parse_head():
            return
        if self.buffer and not self.first_body_at:
            self.first_body_at = time.perf_counter()
        done = self.consume_chunks() if self.length < 0 else len(self.buffer) >= self.length
        if done and self.waiter is not None:
            self.buffer = self.buffer[self.length:] if self.length >= 0 else self.buffer
            self.waiter.set_result((self.status, self.first_body_at))

    def parse_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self.buffer = self.buffer[:end + 2], self.buffer[end + 4:]
        self.status = int(head[9:12])
        match = CONTENT_LENGTH.search(head)
        self.length = int(match.group(1)) if match and not CHUNKED.search(head) else -1
        self.header_done = True
        return True

    def consume_chunks(self) -> bool:
        """Drop whole chunks from the buffer; True once the terminating chunk is read."""
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            need = line_end + 2 + size + 2
            if len(self.buffer) < need:
                return False
            self.buffer = self.buffer[need:]
            if size == 0:
                return True


def build_request(host: str, path: str, key: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nAccept: */*\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def run_connection(conn: Connection, request: bytes, end_at: float, samples: dict[str, list[float]]) -> None:
    while time.perf_counter() < end_at and conn.transport is not None:
        started = time.perf_counter()
        try:
            status, first_body_at = await conn.send(request)
        except ConnectionError:
            samples["error_codes"].append(0.0)
            return
        finished = time.perf_counter()
        if status != 200:
            samples["error_codes"].append(float(status))
            continue
        samples["latency_ms"].append(round((finished - started) * 1000, 4))
        samples["ttfb_ms"].append(round((first_body_at - started) * 1000, 4))


async def serve_runs(args: argparse.Namespace) -> None:
    """Open the connections, then one run per `go` line, each reported as it ends."""
    loop = asyncio.get_running_loop()
    if args.path.endswith("/responses"):      # the Responses API: no stream_options there
        body = orjson.dumps({"model": args.model, "max_output_tokens": 64, "store": False,
                             "input": "Say hello in one short sentence.",
                             **({"stream": True} if args.stream else {})})
    else:
        body = orjson.dumps({
            "model": args.model, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            **({"stream": True, "stream_options": {"include_usage": True}} if args.stream else {}),
        })
    request = build_request(f"127.0.0.1:{args.port}", args.path, args.key, body)
    connections = []
    for _ in range(args.concurrency):
        _, conn = await loop.create_connection(Connection, "127.0.0.1", args.port)
        connections.append(conn)
    print("ready", flush=True)
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
        result = await run(connections, request, args.duration)
        args.out.write_bytes(orjson.dumps(result))
        print("done", flush=True)
    for conn in connections:
        if conn.transport is not None:
            conn.transport.close()


async def run(connections: list[Connection], request: bytes, duration_s: float) -> dict[str, object]:
    samples: dict[str, list[float]] = {"latency_ms": [], "ttfb_ms": [], "error_codes": []}
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    end_at = wall_before + duration_s
    workers = {asyncio.ensure_future(run_connection(c, request, end_at, samples)): c for c in connections}
    _, stuck = await asyncio.wait(workers, timeout=duration_s + STUCK_GRACE_S)
    for worker in stuck:                 # a request that never finished: counted, not awaited
        worker.cancel()
        samples["error_codes"].append(-1.0)
        if (transport := workers[worker].transport) is not None:
            transport.close()            # its answer may still come: not for the next run
    wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
    return {"requests": len(samples["latency_ms"]), "errors": len(samples["error_codes"]),
            "wall_s": wall, "cpu_s": cpu, **samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--key", default="none")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args()
    uvloop.run(serve_runs(args))


if __name__ == "__main__":
    main()
