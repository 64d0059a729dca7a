from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.openai_fake import OpenAIFake, make_openai_fake
from tests.harness import Stack, make_stack


@pytest.fixture
async def openai_fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as fake:
        yield fake


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The gateway in front of fake Anthropic, Gemini and Azure upstreams; SDK
    clients added to `stack.clients` are closed with it."""
    async with make_stack() as running:
        yield running


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[OpenAIFake, OpenAIFake]]:
    """Two fake OpenAI upstreams, for tests of routing between them."""
    async with make_openai_fake() as one, make_openai_fake() as two:
        yield one, two
