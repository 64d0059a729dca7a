"""A model name a client chooses through a wildcard alias reaches the upstream as a model
and nothing else: never as another URL path (Gemini and Azure put the model in the path),
never with control characters (they would break headers), never as the literal `*`.
Each refusal is a 400 naming `model`, answered before any upstream call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.azure_fake import AzureFake, make_azure_fake
from tests.fakes.gemini_fake import GeminiFake, make_gemini_fake
from tests.fakes.openai_fake import OpenAIFake
from tests.harness import CLIENT_KEY, Gateway, make_config, make_gateway

pytestmark = pytest.mark.asyncio
NARROW_KEY = "tk-gemini-star-only"


@dataclass
class Upstreams:
    root: str
    gemini: GeminiFake
    azure: AzureFake


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async with make_gemini_fake() as gemini, make_azure_fake() as azure:
        config = {
            "version": 1, "server": {"log_level": "error"},
            "providers": [
                {"id": "google", "type": "gemini", "base_url": gemini.url,
                 "keys": [{"id": "k", "value": "AIzaSyTESTKEY0123456789"}]},
                {"id": "az", "type": "azure", "base_url": azure.url,
                 "keys": [{"id": "k", "value": "0123456789abcdef0123456789abcdef"}]},
            ],
            "models": [{"alias": "gemini/*", "targets": [{"provider": "google", "model": "*"}]},
                       {"alias": "azure/*", "targets": [{"provider": "az", "model": "*"}]}],
            "keys": [{"id": "team", "key": CLIENT_KEY},
                     {"id": "narrow", "key": NARROW_KEY, "models": ["gemini/gemini-*"]}],
        }
        async with make_gateway(config) as gateway:
            yield Upstreams(gateway.root, gemini, azure)


async def chat(root: str, model: str, key: str = CLIENT_KEY,
               stream: bool = False) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{root}/v1/chat/completions", headers={
            "Authorization": f"Bearer {key}"}, json={
            "model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        return response.status, orjson.loads(await response.read())


ESCAPES = [
    "gemini/gemini-x/../../../../v1beta/cachedContents?",
    "gemini/gemini-x/../../files",
    "gemini/gemini-2.5-flash:generateContent?key=1#",
    "gemini/..",
    "gemini/gemini-%2e%2e%2fx",
    "azure/../../files",
    "azure/gpt4o/chat/completions?api-version=1&x=",
    "azure/dep#frag",
]


@pytest.mark.parametrize("model", ESCAPES)
async def test_a_model_that_would_change_the_upstream_path_is_refused(
        upstreams: Upstreams, model: str) -> None:
    for key in (CLIENT_KEY, NARROW_KEY):
        status, body = await chat(upstreams.root, model, key)
        if key == NARROW_KEY and not model.startswith("gemini/gemini-"):
            assert status == 403        # not on the narrow key's list at all
            continue
        assert status == 400, body
        assert body["error"]["param"] == "model"
    assert upstreams.gemini.requests == [] and upstreams.azure.requests == []


async def test_a_plain_model_still_reaches_gemini_and_azure(upstreams: Upstreams) -> None:
    status, _ = await chat(upstreams.root, "gemini/gemini-2.5-flash")
    assert status == 200
    assert upstreams.gemini.requests[-1].path == "/v1beta/models/gemini-2.5-flash:generateContent"
    status, _ = await chat(upstreams.root, "azure/gpt4o-deploy")
    assert status == 200
    assert upstreams.azure.requests[-1].path == "/openai/deployments/gpt4o-deploy/chat/completions"


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    async with make_gateway(make_config(openai_fake.url)) as running:
        yield running


@pytest.mark.parametrize("model", ["openai/gpt-4o\r\nx-evil: 1", "openai/gpt\n", "openai/a\x00b",
                                   "openai/\x7f"])
@pytest.mark.parametrize("stream", [False, True])
async def test_control_characters_in_a_model_are_refused_before_any_call(
        gateway: Gateway, openai_fake: OpenAIFake, model: str, stream: bool) -> None:
    status, body = await chat(gateway.root, model, stream=stream)
    assert status == 400 and body["error"]["param"] == "model"
    assert openai_fake.requests == []


async def test_the_literal_wildcard_is_not_a_model(gateway: Gateway, openai_fake: OpenAIFake) -> None:
    status, body = await chat(gateway.root, "openai/*")
    assert status == 400 and body["error"]["param"] == "model"
    assert "wildcard" in body["error"]["message"]
    assert openai_fake.requests == []
    status, _ = await chat(gateway.root, "openai/gpt-4o-mini")
    assert status == 200 and openai_fake.requests[-1].body["model"] == "gpt-4o-mini"
