"""Test harness for the provider end-to-end tests: the fake Anthropic, Gemini and Azure
upstreams, and the real TruckLLM app in front of them on a real port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from tests.fakes.anthropic_fake import AnthropicFake, make_anthropic_fake
from tests.fakes.azure_fake import AzureFake, make_azure_fake
from tests.fakes.gemini_fake import GeminiFake, make_gemini_fake
from truckllm.config.loader import load_bytes
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server.app import create_app

CLIENT_KEY = "tk-providers-client-key"
EXTRA_HEADERS = {"x-team": "truck-test"}      # a provider's `headers:`, sent with every request
UPSTREAM_KEYS = {"claude": "sk-ant-upstream-1", "google": "gm-upstream-1", "az": "az-upstream-1"}


@dataclass
class Stack:
    url: str                    # TruckLLM's base URL, ending in /v1
    root: str
    anthropic: AnthropicFake
    gemini: GeminiFake
    azure: AzureFake
    clients: list[Any] = field(default_factory=list)     # SDK clients to close at the end


def make_config(anthropic_url: str, gemini_url: str, azure_url: str) -> dict[str, Any]:
    def keys(provider: str) -> list[dict[str, str]]:
        return [{"id": "k1", "value": UPSTREAM_KEYS[provider]}]

    return {
        "version": 1,
        "server": {"log_level": "warning"},
        "providers": [
            {"id": "claude", "type": "anthropic", "base_url": anthropic_url, "keys": keys("claude"),
             "headers": EXTRA_HEADERS},
            {"id": "google", "type": "gemini", "base_url": gemini_url, "keys": keys("google"),
             "headers": EXTRA_HEADERS},
            {"id": "az", "type": "azure", "base_url": azure_url, "keys": keys("az"), "headers": EXTRA_HEADERS},
            {"id": "az1", "type": "azure", "base_url": azure_url + "/openai/v1", "keys": keys("az")},
            {"id": "oai", "type": "openai", "base_url": azure_url + "/openai/v1", "keys": keys("az")},
            {"id": "oai-xlate", "type": "openai", "base_url": azure_url + "/openai/v1", "keys": keys("az"),
             "responses": "chat"},
            {"id": "demo", "type": "mock"},
        ],
        "models": [
            {"alias": "claude", "targets": [{"provider": "claude", "model": "claude-sonnet-4-5"}]},
            {"alias": "claude-or-gem", "targets": [{"provider": "claude", "model": "claude-sonnet-4-5"},
                                                   {"provider": "google", "model": "gemini-2.5-flash"}]},
            {"alias": "gem", "targets": [{"provider": "google", "model": "gemini-2.5-flash"}]},
            {"alias": "gem-embed", "targets": [{"provider": "google", "model": "gemini-embedding-001"}]},
            {"alias": "az", "targets": [{"provider": "az", "model": "gpt4o-deploy"}]},
            {"alias": "az-v1", "targets": [{"provider": "az1", "model": "gpt4o-deploy"}]},
            {"alias": "az-embed", "targets": [{"provider": "az", "model": "embed-deploy"}]},
            {"alias": "az-whisper", "targets": [{"provider": "az", "model": "whisper-deploy"}]},
            {"alias": "az-tts", "targets": [{"provider": "az", "model": "tts-deploy"}]},
            {"alias": "az-image", "targets": [{"provider": "az", "model": "image-deploy"}]},
            {"alias": "oai-chat", "targets": [{"provider": "oai", "model": "gpt-4o"}]},
            {"alias": "oai-translated", "targets": [{"provider": "oai-xlate", "model": "gpt-4o"}]},
            {"alias": "native-rr", "strategy": "round_robin",
             "targets": [{"provider": "az", "model": "gpt4o-deploy"}, {"provider": "oai", "model": "gpt-4o"}]},
            {"alias": "oai-then-gem", "targets": [{"provider": "oai", "model": "gpt-4o"},
                                                  {"provider": "google", "model": "gemini-2.5-flash"}]},
            {"alias": "oai-embed", "targets": [{"provider": "oai", "model": "text-embedding-3-small"}]},
            {"alias": "oai-whisper", "targets": [{"provider": "oai", "model": "whisper-1"}]},
            {"alias": "demo", "targets": [{"provider": "demo", "model": "mock-1"}]},
        ],
        "keys": [{"id": "team", "key": CLIENT_KEY}],
    }


@asynccontextmanager
async def make_stack() -> AsyncIterator[Stack]:
    async with make_anthropic_fake() as anthropic, make_gemini_fake() as gemini, make_azure_fake() as azure:
        config = make_config(anthropic.url, gemini.url, azure.url)
        loaded = load_bytes(yaml.safe_dump(config).encode(), "providers-test.yaml", {})
        server = TestServer(create_app(StateHolder(build_state(loaded, 1))), host="127.0.0.1")
        await server.start_server()
        root = f"http://127.0.0.1:{server.port}"
        try:
            yield Stack(root + "/v1", root, anthropic, gemini, azure)
        finally:
            await server.close()


def make_openai_client(stack: Stack) -> AsyncOpenAI:
    """An SDK client for the stack's gateway; the `stack` fixture closes it."""
    client = AsyncOpenAI(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    stack.clients.append(client)
    return client
