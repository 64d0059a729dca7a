from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.openai_fake import OpenAIFake, make_openai_fake
from tests.providers_gateway import Stack, make_stack


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
