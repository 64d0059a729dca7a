"""Transport: a stream's idle limit counts only time spent waiting on upstream for the
next chunk, never time the reader spends elsewhere (writing to a slow client), and it
holds however long the stream runs (the stream relay's own reads: tests/pipeline/
test_stream.py). A real local upstream; nothing is mocked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.fakes.paced_upstream import compiled_provider, paced_upstream
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import UpstreamRequest

IDLE_S = 0.2


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
    chunks = await read_all([IDLE_S / 2] * 6)                # 0.6 s in all, 0.1 s apart
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
