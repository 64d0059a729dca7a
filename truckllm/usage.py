"""Token usage of one request, the unit every counter, limit and price is computed from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0          # includes cache reads and writes, as OpenAI counts them
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Read an OpenAI `usage` object; None when it is absent or malformed."""
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        # A count that is not a non-negative integer is 0. Tested inline rather than by a
        # helper per count, and positional (prompt, completion, cache read): read once per
        # answer and per stream, where three calls and keywords cost about half again.
        return cls(prompt if isinstance(prompt, int) and prompt >= 0 else 0,
                   completion if isinstance(completion, int) and completion >= 0 else 0,
                   cached if isinstance(cached, int) and cached >= 0 else 0)

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            body["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return body

