"""A client that leaves cancels the upstream request at once, streaming or not."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import CLIENT_KEY, make_config, make_gateway, wait_until

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


async def test_leaving_mid_stream_closes_the_upstream(openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(chunk_delay_s=0.2, text=" ".join(["word"] * 50)))
    async with make_gateway(make_config(openai_fake.url)) as gateway:
        async with aiohttp.ClientSession() as http:
            response = await http.post(gateway.url + "/chat/completions", json={**BODY, "stream": True}, headers=AUTH)
            assert response.status == 200
            await response.content.readline()             # the first event arrived
            response.close()                               # the client leaves
        upstream = openai_fake.requests[-1]
        await asyncio.wait_for(upstream.disconnected.wait(), timeout=2)


async def test_leaving_while_waiting_closes_the_upstream(openai_fake: OpenAIFake) -> None:
    openai_fake.script(Scripted(hang=True))
    async with make_gateway(make_config(openai_fake.url)) as gateway:
        async with aiohttp.ClientSession() as http:
            request = asyncio.ensure_future(http.post(gateway.url + "/chat/completions", json=BODY, headers=AUTH))
            await wait_until(lambda: len(openai_fake.requests) == 1)
            request.cancel()                               # the client gives up
            with pytest.raises(asyncio.CancelledError):
                await request
        await asyncio.wait_for(openai_fake.requests[-1].disconnected.wait(), timeout=2)


async def test_leaving_before_the_first_event_closes_the_upstream_and_frees_the_slot(
        openai_fake: OpenAIFake) -> None:
    """The upstream answered 200 but sent no event yet: the gateway is still deciding
    whether to retry. A client leaving then closes that upstream stream too, and gives
    back the key's only concurrency slot."""
    openai_fake.script(Scripted(chunk_delay_s=5))
    config = make_config(openai_fake.url)
    config["keys"][0].update(max_concurrent=1, tpm=1_000_000)
    async with make_gateway(config) as gateway, aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.post(gateway.url + "/chat/completions",
                                                  json={**BODY, "stream": True}, headers=AUTH))
        await wait_until(lambda: len(openai_fake.requests) == 1)
        await asyncio.sleep(0.1)                       # the 200 arrived; the first event did not
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.wait_for(openai_fake.requests[-1].disconnected.wait(), timeout=2)
        async def served() -> bool:
            response = await http.post(gateway.url + "/chat/completions", json=BODY, headers=AUTH)
            return response.status == 200
        for _ in range(100):                           # the slot comes back once the handler ends
            if await served():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the concurrency slot was not given back")
