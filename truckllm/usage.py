"""Token usage of one request, the unit every counter, limit and price is computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_COUNT_LIMIT = 2 ** 63


@dataclass(slots=True, init=False)
class Usage:
    prompt_tokens: int              # includes cache reads and writes, as OpenAI counts them
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    # prompt + completion, summed when the Usage is made: health, the limiter, the access
    # log and the key counters all read it, and nothing changes the counts afterwards.
    total_tokens: int = field(init=False, repr=False, compare=False)

    def __init__(self, prompt_tokens: int = 0, completion_tokens: int = 0,
                 cache_read_tokens: int = 0, cache_write_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.total_tokens = prompt_tokens + completion_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Read an OpenAI `usage` object; None when it is absent or malformed."""
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(token_count(usage.get("prompt_tokens")),
                   token_count(usage.get("completion_tokens")), token_count(cached))

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            body["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return body


def token_count(value: Any) -> int:
    """A token count as an upstream's usage reports it: a non-negative JSON integer (not
    `true`, which Python reads as 1) that a 64-bit counter (Redis's, the state file's)
    holds; anything else counts 0."""
    return value if value.__class__ is int and 0 <= value < _COUNT_LIMIT else 0
