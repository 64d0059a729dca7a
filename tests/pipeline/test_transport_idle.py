"""Transport: a stream's idle limit counts only time spent waiting on upstream for the
next chunk, never time the reader spends elsewhere (writing to a slow client), and it
holds however long the stream runs (the stream relay's own reads: tests/pipeline/
test_stream.py). Chunks pushed to a sink while a read waits: a declined one and those
after it are what the read returns, in order; what the sink raises, the read raises; a
chunk taken counts as data flowing. A real local upstream; nothing is mocked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from tests.fakes.paced_upstream import compiled_provider, paced_upstream
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import UpstreamRequest, UpstreamResponse

# Gaps meant to stay under the limit are a third of it: the test, the gateway's transport
# and the paced upstream share one event loop, which a loaded machine can hold up.
IDLE_S = 0.3


@asynccontextmanager
async def streamed(gaps_s: Sequence[float]) -> AsyncIterator[UpstreamResponse]:
    """The response of a paced upstream stream (lines `chunk 0`, `chunk 1`, ...), its first
    chunk read and its idle limit armed."""
    async with paced_upstream(gaps_s) as base_url:
        provider, target = compiled_provider(base_url, IDLE_S)
        transport = Transport()
        request = UpstreamRequest("POST", base_url + "/chat/completions", {}, b"{}", True)
        response = await transport.send(provider, target, request, "req-1")
        try:
            assert await response.read_chunk(marked=False) == b"chunk 0\n"
            response.watch_idle()
            yield response
        finally:
            response.close()
            await transport.close()


async def read_all(gaps_s: Sequence[float], pause_after_each_s: float = 0.0,
                   first_after_s: float = 0.0) -> list[bytes]:
    async with paced_upstream(gaps_s, first_after_s) as base_url:
        provider, target = compiled_provider(base_url, IDLE_S)
        transport = Transport()
        request = UpstreamRequest("POST", base_url + "/chat/completions", {}, b"{}", True)
        response = await transport.send(provider, target, request, "req-1")
        chunks: list[bytes] = []
        try:
            async for chunk in response.iter_chunks():
                chunks.append(chunk)
                await asyncio.sleep(pause_after_each_s)     # a slow client being written to
        finally:
            response.close()
            await transport.close()
        return chunks


async def test_gaps_under_the_limit_never_stall_however_long_the_stream() -> None:
    chunks = await read_all([IDLE_S / 3] * 6)                # 0.6 s in all, 0.1 s apart
    assert b"".join(chunks).count(b"chunk") == 7


async def test_time_spent_away_from_the_read_does_not_count() -> None:
    chunks = await read_all([0.0, 0.0], pause_after_each_s=IDLE_S * 2)
    assert b"".join(chunks).count(b"chunk") == 3


async def test_a_gap_over_the_limit_while_reading_fails_the_stream() -> None:
    with pytest.raises(TransportError) as failure:
        await read_all([0.0, IDLE_S * 3])
    assert failure.value.kind == "timeout" and "stalled" in str(failure.value)


async def test_the_wait_for_the_first_chunk_is_not_limited() -> None:
    chunks = await read_all([], first_after_s=IDLE_S * 2)    # dispatch bounds that wait
    assert chunks == [b"chunk 0\n"]


async def test_pushed_chunks_go_to_the_sink_and_a_declined_one_and_the_rest_to_the_read() -> None:
    taken: list[bytes] = []

    def sink(chunk: bytes) -> bool:
        if b"2" in chunk or taken[-1:] == [b"declined"]:
            taken.append(b"declined")
            return False
        taken.append(chunk)
        return True

    async with streamed([0.02] * 4) as response:
        assert response.push_to(sink)  # type: ignore[attr-defined]
        first_read = await response.read_chunk()
        rest = [chunk async for chunk in _reads(response)]
    assert taken[:2] == [b"chunk 1\n", b"declined"]
    # Whatever the read returns, in order: the declined chunk first, nothing skipped.
    assert b"".join([first_read, *rest]) == b"chunk 2\nchunk 3\nchunk 4\n"


async def test_what_the_sink_raises_the_waiting_read_raises() -> None:
    def sink(chunk: bytes) -> bool:
        raise ValueError(f"cannot take {chunk!r}")

    async with streamed([0.02] * 2) as response:
        assert response.push_to(sink)  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="cannot take"):
            await response.read_chunk()


async def test_chunks_the_sink_takes_keep_the_idle_limit_from_firing() -> None:
    taken: list[bytes] = []
    async with streamed([IDLE_S / 3] * 6) as response:    # 0.6 s in all, never idle
        assert response.push_to(lambda chunk: taken.append(chunk) is None)  # type: ignore[attr-defined]
        assert await response.read_chunk() == b""
    assert b"".join(taken).count(b"chunk") == 6


async def _reads(response: UpstreamResponse) -> AsyncIterator[bytes]:
    while chunk := await response.read_chunk():
        yield chunk
