"""Reasoning in the chat pivot: the one effort -> thinking-budget table every translator
uses (Anthropic `thinking.budget_tokens`, Gemini `thinkingConfig.thinkingBudget`), and the
extension fields that carry a provider's reasoning through chat for the dialects that can
hand it back to their clients (the Responses API, Anthropic Messages).

The extension, on an assistant message (answers and requests) or a stream delta:
- `reasoning_content`: the reasoning text the provider showed (Anthropic thinking, Gemini
  thought summaries), as several OpenAI-compatible servers send it;
- `reasoning_state`: `{"provider": <provider type>, "blocks": [...]}`, what the provider
  needs back to continue the turn (Anthropic thinking and redacted_thinking blocks with
  their signatures, the thought signature of a Gemini text part), opaque to everything but
  that provider type's translator.
Plain chat completions clients never see them (CallContext.carry_reasoning is set only for
dialects served through chat that show reasoning); an assistant message that carries `reasoning_state` is sent
back upstream as the provider's blocks in place.

Pure, no I/O. Imports nothing from truckllm.
"""

from __future__ import annotations

from typing import Any

# reasoning_effort as a thinking budget (tokens), as Google's own OpenAI-compatible
# endpoint maps it; other efforts (none, minimal) leave the model's default, since some
# models cannot turn thinking off. 1024 is also Anthropic's smallest budget.
THINKING_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}


def thinking_budget(effort: str | None) -> int | None:
    """The thinking budget for a chat `reasoning_effort`, or None to leave the default."""
    return THINKING_BUDGETS.get(effort or "")


def reasoning_state(provider: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The `reasoning_state` extension value for a provider type's blocks."""
    return {"provider": provider, "blocks": blocks}


def joined(state: dict[str, Any] | None, more: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two pieces of reasoning state as one (the blocks in order); a piece from another
    provider than the first replaces it (the conversation moved providers)."""
    if more is None or not isinstance(more.get("blocks"), list):
        return state
    if state is None or state.get("provider") != more.get("provider"):
        return more
    return {**state, "blocks": [*state["blocks"], *more["blocks"]]}


def state_blocks(state: Any, provider: str) -> list[dict[str, Any]]:
    """The blocks of a `reasoning_state` made by `provider` (a provider type); none for
    another provider's (a conversation moved on fallback) or a malformed one."""
    if not isinstance(state, dict) or state.get("provider") != provider:
        return []
    blocks = state.get("blocks")
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict)]


def without_reasoning_state(body: dict[str, Any]) -> dict[str, Any]:
    """A chat request body for an upstream that speaks chat itself (openai, azure): the
    `reasoning_state` of its assistant messages left out, since such upstreams refuse
    fields they do not know and it means nothing to them (it is another provider's)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(isinstance(m, dict) and "reasoning_state" in m
                                                 for m in messages):
        return body
    return {**body, "messages": [{k: v for k, v in m.items() if k != "reasoning_state"}
                                 if isinstance(m, dict) else m for m in messages]}
