from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.ports import WORKER_SLICES

# The fixtures import the harness, the fakes and Redis's helper when first used: the
# pytest process that hands out the tests to the workers loads this module too, and
# without them it starts the workers about 0.7 s of CPU sooner (the harness brings in
# the openai SDK and TruckLLM). The workers import them with the test modules anyway.
if TYPE_CHECKING:
    from tests.fakes.openai_fake import OpenAIFake
    from tests.harness import Stack
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
    from tests.fakes.openai_fake import make_openai_fake
    async with make_openai_fake() as fake:
        yield fake


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The gateway in front of fake Anthropic, Gemini and Azure upstreams; SDK
    clients added to `stack.clients` are closed with it."""
    from tests.harness import make_stack
    async with make_stack() as running:
        yield running


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[OpenAIFake, OpenAIFake]]:
    """Two fake OpenAI upstreams, for tests of routing between them."""
    from tests.fakes.openai_fake import make_openai_fake
    async with make_openai_fake() as one, make_openai_fake() as two:
        yield one, two


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One redis-server for the session (installed with apt when missing)."""
    from tests.redis_server import RedisServer
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
    """Tests marked `slow` run first, the longest first (`slow(seconds=N)`: about N
    seconds; a module's mark: one). They spend most of their time waiting on real
    processes and timers; started early, their waits overlap the tests that keep the CPU
    busy, where at the end they would leave the cores idle while the last of them run.
    (Each test worker takes a run of the list in order, and an idle one takes tests from
    the end of another's.)"""
    def expected_seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return 0 if mark is None else mark.kwargs.get("seconds", 1)
    items.sort(key=expected_seconds, reverse=True)
