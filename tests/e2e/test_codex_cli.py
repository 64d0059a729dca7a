"""End to end: Codex CLI (`codex exec`, npm `@openai/codex`, pinned in tests/npm_tools.py)
with a model provider entry pointing at TruckLLM (`wire_api = "responses"`), on an
Anthropic, a Gemini and an Azure (native Responses API) alias: a one-turn answer, and a
turn in which the model calls Codex's shell tool (`exec_command`), Codex runs `echo hello`
and sends its output back, and the model answers with it; and, with reasoning turned on
(`model_reasoning_effort`), that a Claude model's signed thinking block makes it back to
Anthropic through Codex's stateless turns.

Turned off in Codex for the test, with its documented settings: the update check
(`check_for_update_on_startup = false`), analytics (`[analytics] enabled = false`),
feedback (`[feedback] enabled = false`), OpenTelemetry export (`[otel] exporter =
"none"`), request retries (`request_max_retries`, `stream_max_retries` = 0), the command
sandbox (`--sandbox danger-full-access`: the test's own command is `echo hello`), and
session files (`--ephemeral`). CODEX_HOME is a temporary directory, so nothing of the
user's own Codex setup is read or written."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.fakes.anthropic_fake import THINKING_SIGNATURE
from tests.harness import CLIENT_KEY, Stack
from tests.npm_tools import npm_packages

CONFIG = """
model = "{alias}"
model_provider = "truckllm"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

[model_providers.truckllm]
name = "TruckLLM"
base_url = "{url}"
env_key = "TRUCKLLM_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


@pytest.fixture(scope="session")
def codex() -> Path:
    return npm_packages() / "node_modules" / ".bin" / "codex"


# Codex asks for reasoning (`reasoning.effort`) only where told the model has it.
REASONING = """
model_reasoning_effort = "low"
model_supports_reasoning_summaries = true
"""


async def run_codex(codex: Path, stack: Stack, alias: str, prompt: str, tmp_path: Path,
                    extra_config: str = "") -> str:
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(extra_config + CONFIG.format(alias=alias, url=stack.url))
    last = tmp_path / "last-message.txt"
    process = await asyncio.create_subprocess_exec(
        str(codex), "exec", "--skip-git-repo-check", "--ephemeral", "--sandbox", "danger-full-access",
        "--color", "never", "-C", str(work), "-o", str(last), prompt,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CODEX_HOME": str(home), "TRUCKLLM_API_KEY": CLIENT_KEY})
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, (out + err).decode()[-2000:]
    return last.read_text()


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_codex_one_turn_answer(stack: Stack, codex: Path, alias: str, tmp_path: Path) -> None:
    answer = await run_codex(codex, stack, alias, "say hi", tmp_path)
    assert answer.startswith("Fake reply to:") and "say hi" in answer


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_codex_runs_a_shell_tool_call(stack: Stack, codex: Path, alias: str, tmp_path: Path) -> None:
    answer = await run_codex(codex, stack, alias, "run echo hello in the shell", tmp_path)
    assert answer.startswith("Tool said:") and "hello" in answer


async def test_codex_keeps_claude_thinking_across_a_tool_call(stack: Stack, codex: Path, tmp_path: Path) -> None:
    """Codex sends every turn whole (`store: false`) with the reasoning items it got, their
    `encrypted_content` included: Anthropic gets its signed thinking block back before the
    tool call, as it requires with thinking on."""
    answer = await run_codex(codex, stack, "claude", "run echo hello in the shell", tmp_path, REASONING)
    assert answer.startswith("Tool said:") and "hello" in answer
    turns = [r.body for r in stack.anthropic.requests if isinstance(r.body, dict) and r.body.get("tools")]
    assert turns[0]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assistant = [m for m in turns[-1]["messages"] if m["role"] == "assistant"][-1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE}
    assert assistant[-1]["type"] == "tool_use" and turns[-1]["thinking"]["type"] == "enabled"
