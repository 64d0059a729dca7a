"""Wildcard aliases: one `*` anywhere in an alias, standing for what the client's model
name has there; an exact alias wins, then the most specific pattern (the one fixing the
most characters), then config order; `*` in a target's model gets what was matched."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from truckllm.config.loader import ConfigError, load_bytes
from truckllm.errors import InvalidRequest
from truckllm.runtime.state import State, build_state


def state_for(aliases: list[tuple[str, str]]) -> State:
    config: dict[str, Any] = {
        "version": 1,
        "providers": [{"id": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                       "keys": [{"id": "k", "value": "sk-test"}]}],
        "models": [{"alias": alias, "targets": [{"provider": "up", "model": model}]} for alias, model in aliases],
    }
    return build_state(load_bytes(yaml.safe_dump(config).encode(), "wildcards.yaml", {}), 1)


STATE_ALIASES = [("*", "*"), ("openai/*", "*"), ("claude-*", "claude-*"), ("*-fast", "*-mini"),
                 ("claude-sonnet-4-5", "claude-sonnet-4-5"), ("claude-sonnet-*", "sonnet/*"),
                 ("openai/gpt-*", "gpt-*")]


@pytest.mark.parametrize(("model", "alias", "upstream"), [
    ("claude-sonnet-4-5", "claude-sonnet-4-5", "claude-sonnet-4-5"),        # exact first
    ("claude-sonnet-4-5-20250929", "claude-sonnet-*", "sonnet/4-5-20250929"),  # most specific
    ("claude-haiku-4-5-20251001", "claude-*", "claude-haiku-4-5-20251001"),
    ("gpt-4o-fast", "*-fast", "gpt-4o-mini"),                               # `*` at the start
    ("openai/gpt-4o", "openai/gpt-*", "gpt-4o"),
    ("openai/o3", "openai/*", "o3"),                                        # prefix/* as before
    ("anything", "*", "anything"),
])
def test_resolution(model: str, alias: str, upstream: str) -> None:
    resolved = state_for(STATE_ALIASES).resolve(model)
    assert resolved is not None
    route, targets = resolved
    assert (route.alias, targets[0].model) == (alias, upstream)


def test_the_star_matches_at_least_one_character() -> None:
    state = state_for([("claude-*", "claude-*"), ("*-fast", "*")])
    assert state.resolve("claude-") is None and state.resolve("-fast") is None


def test_equally_specific_patterns_go_in_config_order() -> None:
    state = state_for([("a-*", "first-*"), ("*-z", "second-*")])
    resolved = state.resolve("a-middle-z")
    assert resolved is not None and resolved[1][0].model == "first-middle-z"


def test_a_star_sent_as_the_model_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        state_for([("claude-*", "claude-*")]).resolve("claude-*")


def test_an_alias_has_at_most_one_star() -> None:
    with pytest.raises(ConfigError) as raised:
        state_for([("claude-*-*", "x")])
    assert "one '*'" in str(raised.value)


def test_a_star_in_a_target_needs_a_wildcard_alias() -> None:
    with pytest.raises(ConfigError) as raised:
        state_for([("claude", "claude-*")])
    assert "wildcard alias" in str(raised.value)
