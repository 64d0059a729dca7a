"""pipeline/pushed_body.py leans on how aiohttp delivers a response body (see its
docstring): this fails loudly when the installed aiohttp is one it was not checked
against, or when a real aiohttp response no longer hands its body to the attached sink.
A real local upstream (tests/fakes/paced_upstream.py) and a real aiohttp client; nothing
is mocked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp

from tests.fakes.paced_upstream import line, paced_upstream
from truckllm.pipeline import pushed_body

PIECES = [line(index) for index in range(6)]


def test_the_installed_aiohttp_is_in_the_checked_range() -> None:
    installed = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    low, high = pushed_body.CHECKED_AIOHTTP
    assert low <= installed < high, (
        f"aiohttp {aiohttp.__version__} is outside the range pipeline/pushed_body.py was "
        f"checked against ({low} to {high}): check that bodies still arrive through "
        f"StreamReader.feed_data, then widen the range")


@asynccontextmanager
async def streamed_response(compressed: bool = False) -> AsyncIterator[aiohttp.ClientResponse]:
    """A response whose body comes in PIECES, each written after the client has had
    time to take the one before; the client's response is open once its headers are in."""
    async with paced_upstream([0.01] * (len(PIECES) - 1), 0.01, line, compressed) as base_url, \
            aiohttp.ClientSession() as session, \
            session.post(base_url + "/chat/completions") as response:
        yield response


async def read_rest(response: aiohttp.ClientResponse) -> list[bytes]:
    reads = []
    while chunk := await response.content.readany():
        reads.append(chunk)
    return reads


def sink_taking(taken: list[bytes], take: Callable[[bytes], bool] = lambda piece: True) -> pushed_body.Sink:
    def sink(piece: bytes) -> bool:
        if not take(piece):
            return False
        taken.append(piece)
        return True
    return sink


async def test_every_piece_goes_to_the_sink_and_the_read_only_sees_the_end() -> None:
    taken: list[bytes] = []
    async with streamed_response() as response:
        assert pushed_body.attach(response.content, sink_taking(taken))
        assert await read_rest(response) == []
    assert b"".join(taken) == b"".join(PIECES)
    assert len(taken) > 1           # as they arrived, not gathered at the end


async def test_a_declined_piece_is_read_the_ordinary_way() -> None:
    taken: list[bytes] = []
    async with streamed_response() as response:
        assert pushed_body.attach(response.content, sink_taking(taken, lambda piece: b"3" not in piece))
        read = await read_rest(response)
    assert read and all(b"3" in chunk for chunk in read)
    assert sorted([*taken, *read]) == sorted(PIECES)


async def test_a_compressed_body_reaches_the_sink_decompressed() -> None:
    taken: list[bytes] = []
    async with streamed_response(compressed=True) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert pushed_body.attach(response.content, sink_taking(taken))
        assert await read_rest(response) == []
    assert b"".join(taken) == b"".join(PIECES)


async def test_after_detach_the_body_is_read_the_ordinary_way() -> None:
    taken: list[bytes] = []
    async with streamed_response() as response:
        assert pushed_body.attach(response.content, sink_taking(taken))
        pushed_body.detach(response.content)
        pushed_body.detach(response.content)        # twice is harmless
        assert b"".join(await read_rest(response)) == b"".join(PIECES)
    assert taken == []


async def test_a_reader_of_another_kind_is_left_alone() -> None:
    reader = aiohttp.streams.EmptyStreamReader()
    assert not pushed_body.attach(reader, sink_taking([]))  # type: ignore[arg-type]
    assert type(reader) is aiohttp.streams.EmptyStreamReader
