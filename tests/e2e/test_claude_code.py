"""End to end: Claude Code (`claude -p`, npm `@anthropic-ai/claude-code`, pinned in
tests/npm_tools.py) with ANTHROPIC_BASE_URL pointing at TruckLLM, on an Anthropic alias,
a Gemini alias and an OpenAI-type alias (and a dated Claude model id, as Claude Code sends
them, caught by a `claude-*` wildcard alias): a one-turn answer, and a turn in which the model calls Claude Code's
`Bash` tool, Claude Code runs `echo hello` and sends its output back, and the model answers
with it. Each test also checks what the fake upstream received, because Claude Code
quietly retries without its mid-conversation system message when a server refuses it:
an answer alone would not prove the request was served as sent.

Turned off in Claude Code for the test, with its documented settings: all non-essential
network traffic (CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1: update checks, telemetry,
error reporting, feedback), telemetry again on its own (DISABLE_TELEMETRY=1), the
auto-updater (DISABLE_AUTOUPDATER=1), error reporting (DISABLE_ERROR_REPORTING=1), the
permission prompt for the one command the test lets it run (`--allowedTools
"Bash(echo:*)"`). HOME is a temporary directory, so nothing of the user's own Claude Code
setup (settings, credentials, sessions) is read or written, and no login is needed: the
client key goes in ANTHROPIC_API_KEY."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_fake import THINKING_SIGNATURE
from tests.fakes.wire_fake import Recorded
from tests.harness import CLIENT_KEY, Stack
from tests.npm_tools import npm_packages

DATED_ID = "claude-sonnet-4-5-20250929"        # served by the `claude-*` alias
# Aliases whose names Claude Code does not know: it then turns on every feature it has
# (for a known model it sends only the betas that model supports).
ALIASES = ["claude", "gem", "oai-chat"]
# What Claude Code 2.1.197 sends as a system message in the middle of `messages`.
MID_CONVERSATION_SYSTEM = "Available agent types"


@pytest.fixture(scope="session")
def claude() -> Path:
    return npm_packages() / "node_modules" / ".bin" / "claude"


async def run_claude(claude: Path, stack: Stack, model: str, prompt: str, tmp_path: Path,
                     *flags: str) -> str:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "ANTHROPIC_BASE_URL": stack.root, "ANTHROPIC_API_KEY": CLIENT_KEY,
           # Side requests (titles, summaries) go to the same alias, not to a Haiku id.
           "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
           "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1"}
    process = await asyncio.create_subprocess_exec(
        str(claude), "-p", prompt, "--model", model, *flags, cwd=work, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, (out + err).decode()[-2000:]
    return out.decode()


def received(stack: Stack, model: str) -> list[Recorded]:
    fake = {"claude": stack.anthropic, DATED_ID: stack.anthropic, "gem": stack.gemini, "oai-chat": stack.azure}[model]
    requests = [r for r in fake.requests if r.method == "POST"]
    assert requests, "the upstream got the conversation"
    return requests


def check_served_as_sent(stack: Stack, model: str) -> None:
    """The mid-conversation system message arrived where each kind of upstream takes it,
    and the Anthropic-only fields went only to Anthropic."""
    for request in received(stack, model):
        body: dict[str, Any] = request.body
        if model == "claude":
            assert body["model"] == "claude-sonnet-4-5"
            assert "mid-conversation-system-2026-04-07" in request.headers["anthropic-beta"]
            roles = [m["role"] for m in body["messages"]]
            assert "system" in roles and roles[0] == "user"
            system = next(m for m in body["messages"] if m["role"] == "system")
            assert MID_CONVERSATION_SYSTEM in str(system["content"])
            assert body["thinking"]["type"] in ("adaptive", "enabled") and "effort" in body["output_config"]
            assert body["context_management"]["edits"] and body["metadata"]["user_id"]
            assert any("cache_control" in block for block in body["system"])
        elif model == "gem":
            assert all(content["role"] in ("user", "model") for content in body["contents"])
            instruction = " ".join(part["text"] for part in body["systemInstruction"]["parts"])
            assert MID_CONVERSATION_SYSTEM in instruction
            assert "thinkingConfig" not in body.get("generationConfig", {})    # adaptive: the model's default
        else:
            roles = [m["role"] for m in body["messages"]]
            first_user = roles.index("user")
            later = [m for m in body["messages"][first_user:] if m["role"] == "system"]
            assert later and MID_CONVERSATION_SYSTEM in later[0]["content"]    # kept in place
            # Claude Code's long tool descriptions (Bash's runs to thousands of characters)
            # are cut to OpenAI's 1024 and given whole in a system message ahead.
            spilled = [m for m in body["messages"][:first_user] if m["content"].startswith("Full descriptions")]
            assert spilled and "## Tool Bash" in spilled[0]["content"]
            assert not {"thinking", "output_config", "context_management", "reasoning_effort"} & set(body)


@pytest.mark.parametrize("model", ALIASES)
async def test_claude_code_answers(stack: Stack, claude: Path, model: str, tmp_path: Path) -> None:
    answer = await run_claude(claude, stack, model, "say hi", tmp_path)
    assert answer.startswith("Fake reply to:") and answer.rstrip().endswith("say hi")
    check_served_as_sent(stack, model)


@pytest.mark.parametrize("model", ALIASES)
async def test_claude_code_runs_a_bash_tool_call(stack: Stack, claude: Path, model: str, tmp_path: Path) -> None:
    answer = await run_claude(claude, stack, model, "run echo hello", tmp_path, "--allowedTools", "Bash(echo:*)")
    assert answer.startswith("Tool said:") and "hello" in answer
    check_served_as_sent(stack, model)
    if model == "claude":
        # The thinking block came back with its signature on the turn after the tool call.
        follow_up = received(stack, model)[-1].body["messages"]
        assistant = next(m for m in follow_up if m["role"] == "assistant")
        thinking = [b for b in assistant["content"] if b["type"] == "thinking"]
        assert thinking and thinking[0]["signature"] == THINKING_SIGNATURE


async def test_claude_code_with_a_dated_model_id(stack: Stack, claude: Path, tmp_path: Path) -> None:
    answer = await run_claude(claude, stack, DATED_ID, "say hi", tmp_path)
    assert answer.startswith("Fake reply to:")
    assert [r.body["model"] for r in received(stack, DATED_ID)] == [DATED_ID]      # `*` passed on as sent
