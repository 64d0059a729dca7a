from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.fakes.openai_fake import OpenAIFake, make_openai_fake
from tests.providers_gateway import Stack, make_stack
from tests.redis_server import RedisServer


@pytest.fixture
async def openai_fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as fake:
        yield fake


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The gateway in front of fake Anthropic, Gemini, Azure and OpenAI upstreams."""
    async with make_stack() as running:
        yield running
        for client in running.clients:
            await client.close()


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One redis-server for the session (installed with apt when missing)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    redis_session.flush()
    return redis_session.url
