"""Each per-provider timeout end to end (connect, first byte, total): the request moves on
to the next target or ends with the right error, and a flowing stream is ended cleanly."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import openai
import orjson
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import (
    MESSAGES,
    make_gateway,
    one_key_each,
    two_providers,
)
from truckllm.clock import ManualClock


@contextmanager
def unreachable_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connection attempt gets no answer
    (the kernel drops its SYN), just like a firewalled or dead host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_connect_timeout_moves_on_and_alone_is_502(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    _, two = fakes
    with unreachable_port() as port:
        config = one_key_each(two_providers(f"http://127.0.0.1:{port}/v1", two.url,
                                            provider_extra="    connect_timeout_s: 0.3"))
        async with make_gateway(config, clock=ManualClock()) as gw:
            raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
            assert raw.headers["x-truckllm-attempts"] == "2" and raw.headers["x-truckllm-provider"] == "p2"
            assert gw.routing.health.key_health("p1/k1").last_error is not None
        alone = config.replace("targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
                               "targets: [{provider: p1, model: m1}]")
        async with make_gateway(alone, clock=ManualClock()) as gw:
            status, _, body = await gw.raw_chat()
    error = orjson.loads(body)["error"]
    assert (status, error["type"]) == (502, "upstream_error")
    assert "connect timed out" in error["message"]


async def test_first_byte_timeout_of_a_stream_moves_on(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, provider_extra="    first_byte_timeout_s: 0.5")
    one.script(Scripted(chunk_delay_s=5))                    # headers at once, no token
    async with make_gateway(config, clock=ManualClock()) as gw:
        stream = await gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Fake reply to: hello"
    assert len(two.requests) == 1
    await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)


async def test_total_timeout_bounds_a_plain_request(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = one_key_each(two_providers(one.url, two.url, routing="  max_attempts: 1",
                                        provider_extra="    timeout_s: 0.3")).replace(
        "targets: [{provider: p1, model: m1}, {provider: p2, model: m2}]",
        "targets: [{provider: p1, model: m1}]")
    one.script(Scripted(delay_s=5))
    async with make_gateway(config, clock=ManualClock()) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.chat()
        assert caught.value.status_code == 504
        assert orjson.loads(caught.value.response.content)["error"]["type"] == "timeout_error"
        await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)
    # The 0.3 s spent waiting on the upstream is upstream time, not TruckLLM's overhead.
    assert float(caught.value.response.headers["x-truckllm-overhead-ms"]) < 250


async def test_total_timeout_ends_a_flowing_stream_cleanly(fakes: tuple[OpenAIFake, OpenAIFake]) -> None:
    one, two = fakes
    config = two_providers(one.url, two.url, provider_extra="    timeout_s: 0.5\n    idle_timeout_s: 5")
    one.script(Scripted(chunk_delay_s=0.05, text=" ".join(["word"] * 60)))   # never idle, 3 s long
    async with make_gateway(config, clock=ManualClock()) as gw:
        body = await gw.raw_stream()
        await asyncio.wait_for(one.requests[0].disconnected.wait(), 5)
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["type"] == "timeout_error"
    assert b"word" in body and not two.requests              # no retry after the first byte
