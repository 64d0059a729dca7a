from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.openai_fake import OpenAIFake, make_openai_fake


@pytest.fixture
async def openai_fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as fake:
        yield fake
