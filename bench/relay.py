"""`python -m bench.relay`: instructions per stream of the stream relay alone, without network.

The bench's stream (role chunk, N content chunks, finish chunk, usage chunk, `[DONE]`, as
bench.fake_upstream sends it) is fed to `StreamRelay` in reads of a few whole events each,
through the `openai` pass-through translator (`--api chat`), the Anthropic Messages
API served through chat (`--api messages`) or the Responses API passed through natively
(`--api responses`: the bench's Responses event stream), and written to a writer that
drops it. What is counted is the relay's and the translator's work per stream: no
aiohttp, no socket. With `--arriving`, each read is fed to an aiohttp `StreamReader` while the relay waits for
it, on uvloop, and read through the transport's response class: the relay's reading, its
wait and its wake-up are counted too (and the feeding task's, the same for any relay).

Each count runs this module under valgrind's callgrind twice, with N and 2N streams
(`PYTHONHASHSEED=0`), and prints the difference divided by N: start-up and imports cancel
out, so the figure is deterministic to the instruction and a change of a few hundred
instructions per stream shows. Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import uvloop

from bench.fake_upstream import build_responses_events, build_stream_events

ALIAS = "bench-model"


class _Reads:
    """An upstream response whose body is the given reads."""

    status = 200
    headers: Mapping[str, str] = {"Content-Type": "text/event-stream"}

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads
        self._next = 0

    async def read(self) -> bytes:
        return b"".join(self._reads)

    async def read_chunk(self, marked: bool = True) -> bytes:
        index = self._next
        self._next = index + 1
        return self._reads[index] if index < len(self._reads) else b""

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read

    def watch_idle(self) -> None:
        return None

    def close(self) -> None:
        return None


class _Arriving:
    """An aiohttp client response whose body is the given reads, each arriving while the
    reader waits for it (as from a socket): seen through the transport's own response
    class, so that its reading, the wait and the wake-up are counted as in the gateway."""

    status = 200
    headers: Mapping[str, str] = {"Content-Type": "text/event-stream"}

    def __init__(self, reads: list[bytes]) -> None:
        from aiohttp import StreamReader
        from aiohttp.base_protocol import BaseProtocol

        loop = asyncio.get_running_loop()
        protocol = BaseProtocol(loop)
        protocol.connection_made(asyncio.Transport())      # a socket that never pauses
        self.content = StreamReader(protocol, 2 ** 16, loop=loop)
        self._feeder = loop.create_task(self._feed(reads))

    async def _feed(self, reads: list[bytes]) -> None:
        for read in reads:
            await asyncio.sleep(0)      # the reader runs until it waits for the next read
            self.content.feed_data(read)
        await asyncio.sleep(0)
        self.content.feed_eof()

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


def stream_reads(chunks: int, per_read: int, api: str = "chat") -> list[bytes]:
    """The bench's stream as the proxy reads it, `per_read` whole events a read."""
    framed_events = build_responses_events(chunks) if api == "responses" else build_stream_events(chunks)
    # Each framed HTTP chunk is `<size>\r\n<event>\r\n` (the last one also ends the body).
    events = [framed.split(b"\r\n", 1)[1].split(b"\r\n", 1)[0] for framed in framed_events]
    return [b"".join(events[i:i + per_read]) for i in range(0, len(events), per_read)]


async def _run(streams: int, reads: list[bytes], api: str, arriving: bool) -> int:
    from truckllm.pipeline.health import Health
    from truckllm.pipeline.record import Exchange
    from truckllm.pipeline.stream import StreamRelay
    from truckllm.pipeline.transport import _HttpResponse
    from truckllm.providers.base import CallContext, Operation, Target
    from truckllm.providers.registry import REGISTRY

    operation = {"chat": Operation.CHAT, "messages": Operation.MESSAGES,
                 "responses": Operation.RESPONSES}[api]
    spec = REGISTRY["openai"].operations[operation]
    assert spec.new_stream_translator is not None
    target = Target("fake", "openai", "gpt-4o-mini", "http://127.0.0.1:1/v1", {})
    body = ({"model": ALIAS, "stream": True, "input": "hi"} if api == "responses" else
            {"model": ALIAS, "stream": True, "max_tokens": 64,
             "messages": [{"role": "user", "content": "hi"}]})
    health = Health()
    written = 0

    async def write(data: bytes) -> None:
        nonlocal written
        written += len(data)

    for _ in range(streams):
        # The bench's load generator asks for usage in chat streams.
        ctx = CallContext(ALIAS, "req_bench", 1_700_000_000, True, api == "chat", client_body=body,
                          on_response=lambda response: None)
        exchange = Exchange("req_bench", "POST", "/v1/chat/completions")
        attempt = health.begin(("fake", "gpt-4o-mini"), "fake/bench")
        translator = spec.new_stream_translator(target, ctx)
        upstream = _HttpResponse(_Arriving(reads), 60.0) if arriving else _Reads(reads)  # type: ignore[arg-type]
        relay = StreamRelay(upstream, translator, spec.stream_ending, exchange, attempt,
                            12, "sk-bench-upstream", 8 * 1024 * 1024)
        first = await relay.first_output()
        await write(first)
        await write(await relay.write_rest(write))
        relay.abandon()
    return written


def _count(streams: int, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="truckllm-relay-") as scratch:
        out = Path(scratch) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
             "bench.relay", "--inner", str(streams), "--api", args.api,
             "--chunks", str(args.chunks), "--per-read", str(args.per_read),
             *(["--arriving"] if args.arriving else [])],
            env={**os.environ, "PYTHONHASHSEED": "0"}, check=True, capture_output=True)
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", choices=("chat", "messages", "responses"), default="chat")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--per-read", type=int, default=1, help="whole events per upstream read")
    parser.add_argument("--arriving", action="store_true",
                        help="each read arrives while the relay waits for it, through the transport's "
                             "response (its read, the wait and the wake-up counted); default: reads "
                             "handed over at once")
    parser.add_argument("--streams", type=int, default=200, help="N (the runs are N and 2N streams)")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    reads = stream_reads(args.chunks, args.per_read, args.api)
    if args.inner is not None:
        run = _run(args.inner, reads, args.api, args.arriving)
        # Arriving reads wake the relay through the event loop: the gateway's, uvloop.
        if args.arriving:
            uvloop.run(run)
        else:
            asyncio.run(run)
        return
    one, two = _count(args.streams, args), _count(2 * args.streams, args)
    per_stream = (two - one) / args.streams
    print(f"{args.api}{' (arriving)' if args.arriving else ''}: {per_stream / 1000:,.1f}k instructions per stream ({len(reads)} reads of "
          f"{args.per_read} event(s); {per_stream / len(reads) / 1000:,.1f}k per read)")


if __name__ == "__main__":
    main()
