from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Generator, Iterator

import pytest

from tests.fakes.openai_fake import OpenAIFake, make_openai_fake
from tests.harness import Stack, make_stack
from tests.ports import WORKER_SLICES
from tests.redis_server import RedisServer


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` (pyproject.toml's default): two test workers per CPU core. Many tests spend
    part of their time waiting (on a `truckllm serve` process starting, a timer, a client
    CLI), and a second worker per core runs other tests meanwhile. At most one worker per
    port slice of tests/ports.py; PYTEST_XDIST_AUTO_NUM_WORKERS still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return min(2 * (os.cpu_count() or 1), WORKER_SLICES)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    """Collecting imports every test module and the SDKs they use: objects that live as long
    as the test process. The cyclic garbage collector is off meanwhile and then no longer
    looks at them (gc.freeze), so its full collections while the tests run walk only what
    the tests create, not the SDKs' thousands of classes again and again."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` run first. They spend most of their time waiting on real
    processes and timers; started early, their waits overlap the tests that keep the CPU
    busy, where at the end they would leave the cores idle while the last of them run.
    (Each test worker takes a run of the list in order, and an idle one takes tests from
    the end of another's.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
