"""End to end: the official `openai` Node SDK (npm, pinned in tests/npm_tools.py) on
TruckLLM's /v1/responses: responses.create, responses.stream() and a tool loop with
previous_response_id, translated to the fake Anthropic and Gemini upstreams and passed
through natively to the fake Azure one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.harness import CLIENT_KEY, Stack
from tests.npm_tools import npm_packages

SCRIPT = Path(__file__).with_name("node") / "responses_sdk.cjs"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    return npm_packages() / "node_modules"


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_node_sdk_responses(stack: Stack, node_modules: Path, alias: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), stack.url, CLIENT_KEY, alias, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(node_modules)})
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["created"]["model"] == alias and seen["created"]["status"] == "completed"
    assert seen["created"]["text"] == "Fake reply to: hello there"
    assert seen["streamed"]["text"] == "Fake reply to: hello there"
    assert seen["streamed"]["types"][0] == "response.created"
    assert seen["streamed"]["types"][-1] == "response.completed"
    assert seen["call"]["name"] == "get_weather" and "Paris" in seen["call"]["arguments"]
    assert "sunny" in seen["second"]["text"] and seen["second"]["previous"]
