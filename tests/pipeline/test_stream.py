"""pipeline/stream.py: the relay between a real upstream stream and a client, read chunk
by chunk, or pushed as each chunk arrives to a client connection written to directly
while it keeps up. The client gets the same bytes in the same order either way: when it
keeps up, when it falls behind, when the upstream fails mid-stream. The idle limit
counts only the relay's waits on upstream, however the chunks reach it. A real local
upstream (tests/fakes/paced_upstream.py); nothing is mocked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from tests.fakes.paced_upstream import chat_chunk, compiled_provider, paced_upstream
from truckllm.pipeline.health import Health
from truckllm.pipeline.record import Exchange
from truckllm.pipeline.stream import StreamRelay
from truckllm.pipeline.transport import Transport
from truckllm.providers.base import OPENAI_STREAM, CallContext, UpstreamRequest
from truckllm.providers.openai import PassThroughStream

# A gap meant to stay under the limit is a third of it: the test, the relay and the paced
# upstream share one event loop, which a loaded machine can hold up.
IDLE_S = 0.3
APART_S = 0.02          # between chunks: each arrives in a read of its own

# What reached the client, in order: ("first" | "task" | "direct" | "last", bytes).
Sent = list[tuple[str, bytes]]


class Connection:
    """The client's connection as the relay writes to it directly (DirectWriter):
    ready for `ready_for` writes (for every one without it), then behind."""

    def __init__(self, sent: Sent, ready_for: int | None = None) -> None:
        self.sent = sent
        self.ready_for = ready_for

    def ready(self) -> bool:
        return self.ready_for is None or self.ready_for > 0

    def write(self, data: bytes) -> None:
        assert self.ready()
        self.sent.append(("direct", data))
        if self.ready_for is not None:
            self.ready_for -= 1


async def relay_all(gaps_s: Sequence[float], *, pushed: bool, ready_for: int | None = None,
                    pause_per_write_s: float = 0.0,
                    chunk: Callable[[int], bytes] = chat_chunk) -> Sent:
    """A chat stream through the relay to a client that takes `pause_per_write_s` over
    each write of the request's task; `pushed`: with a Connection written to directly."""
    async with paced_upstream(gaps_s, 0.0, chunk) as base_url:
        provider, target = compiled_provider(base_url, IDLE_S)
        transport = Transport()
        request = UpstreamRequest("POST", base_url + "/chat/completions", {}, b"{}", True)
        response = await transport.send(provider, target, request, "req-1")
        relay = StreamRelay(response, PassThroughStream(CallContext("m", "req-1", 1, True, False)),
                            OPENAI_STREAM, Exchange("req-1", "POST", "/v1/chat/completions"),
                            Health().begin(("up", "m"), "up/k"))
        sent: Sent = [("first", await relay.first_output())]

        async def write(data: bytes) -> None:
            await asyncio.sleep(pause_per_write_s)          # a slow client
            sent.append(("task", data))

        try:
            direct = Connection(sent, ready_for) if pushed else None
            sent.append(("last", await relay.write_rest(write, direct)))
        finally:
            relay.abandon()
            await transport.close()
        return sent


def joined(sent: Sent) -> bytes:
    return b"".join(data for _, data in sent)


def written_by(sent: Sent, how: str) -> list[bytes]:
    return [data for kind, data in sent if kind == how]


def content_of(data: bytes) -> list[bytes]:
    return [part.split(b'"', 1)[0] for part in data.split(b'"content":"')[1:]]


@pytest.mark.parametrize("pushed", [False, True], ids=["read", "pushed"])
async def test_the_relay_counts_only_its_waits_on_upstream(pushed: bool) -> None:
    sent = joined(await relay_all([0.0, 0.0, IDLE_S / 3], pushed=pushed, pause_per_write_s=IDLE_S * 2))
    assert b"error" not in sent and content_of(sent) == [b"w0", b"w1", b"w2", b"w3"]
    assert sent.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("pushed", [False, True], ids=["read", "pushed"])
async def test_a_gap_over_the_limit_while_the_relay_waits_ends_the_stream(pushed: bool) -> None:
    sent = joined(await relay_all([0.0, IDLE_S * 3, 0.0], pushed=pushed))
    assert b'"type":"timeout_error"' in sent and b"stalled" in sent
    assert content_of(sent) == [b"w0", b"w1"] and sent.endswith(b"data: [DONE]\n\n")


async def test_pushed_chunks_go_straight_to_the_client_as_read_ones_would() -> None:
    read = await relay_all([APART_S] * 3, pushed=False)
    pushed = await relay_all([APART_S] * 3, pushed=True)
    assert joined(pushed) == joined(read)
    assert [content_of(data) for data in written_by(pushed, "direct")] == [[b"w1"], [b"w2"], [b"w3"]]
    assert written_by(pushed, "task") == []


async def test_a_client_that_falls_behind_gets_the_rest_through_the_task_in_order() -> None:
    read = await relay_all([APART_S] * 3, pushed=False)
    pushed = await relay_all([APART_S] * 3, pushed=True, ready_for=1)
    assert joined(pushed) == joined(read)
    assert [content_of(data) for data in written_by(pushed, "direct")] == [[b"w1"]]
    assert [content_of(data) for data in written_by(pushed, "task")] == [[b"w2"], [b"w3"]]


def failing_at_two(index: int) -> bytes:
    """Chunk 2 is a content chunk and an upstream error event in the same write."""
    if index == 2:
        return chat_chunk(2) + b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    return chat_chunk(index)


async def test_an_upstream_error_mid_stream_ends_it_as_reading_would() -> None:
    read = await relay_all([APART_S] * 3, pushed=False, chunk=failing_at_two)
    pushed = await relay_all([APART_S] * 3, pushed=True, chunk=failing_at_two)
    assert joined(pushed) == joined(read)
    sent = joined(pushed)
    assert content_of(sent) == [b"w0", b"w1", b"w2"] and b"overloaded" in sent
    assert sent.endswith(b"data: [DONE]\n\n")
    # The chunk before the error in its read went out as it came; the error event was
    # written by the request's task once the relay woke it.
    assert [content_of(data) for data in written_by(pushed, "direct")] == [[b"w1"], [b"w2"]]
    assert b"overloaded" in b"".join(written_by(pushed, "task"))
