"""A fast estimate of a request's prompt tokens, reserved against tpm before the call.

Pure; no tokenizer. The estimate is only a reservation: the real usage the upstream
reports replaces it when the request ends (truckllm.limits.limiter reconciles).

The rule (docs/limits.md repeats it): in the prompt-bearing fields of the OpenAI (or
Anthropic) request body, count the characters of every string and number, object keys
included, and divide by 4, rounding up (English text averages about 4 characters per
token; the keys stand in for the few tokens of per-message overhead). Media parts
(images, audio, files) count a flat 85 tokens each instead of their base64 text, and an
array of token ids (`prompt` or `input` as integers) counts one token per id.
"""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4
MEDIA_PART_TOKENS = 85
PROMPT_FIELDS = ("messages", "prompt", "input", "system", "instructions", "tools", "functions")
_TOKEN_ID_FIELDS = frozenset({"prompt", "input"})
_MEDIA_PART_TYPES = frozenset({"image_url", "image", "input_audio", "audio", "file", "document"})


def estimate_prompt_tokens(body: Any) -> int:
    """Estimated prompt tokens of a parsed request body; 0 for anything unrecognised."""
    if not isinstance(body, dict):
        return 0
    counter = _Counter()
    for name in PROMPT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if name in _TOKEN_ID_FIELDS and _is_token_ids(value):
            counter.tokens += _count_token_ids(value)
        else:
            counter.walk(value)
    return counter.tokens + math.ceil(counter.chars / CHARS_PER_TOKEN)


class _Counter:
    __slots__ = ("chars", "tokens")

    def __init__(self) -> None:
        self.chars = 0
        self.tokens = 0

    def walk(self, value: Any) -> None:
        if isinstance(value, str):
            self.chars += len(value)
        elif isinstance(value, dict):
            if value.get("type") in _MEDIA_PART_TYPES:
                self.tokens += MEDIA_PART_TOKENS
                return
            for key, item in value.items():
                self.chars += len(key)
                self.walk(item)
        elif isinstance(value, list):
            for item in value:
                self.walk(item)
        elif isinstance(value, bool) or value is None:
            self.chars += 4
        elif isinstance(value, int | float):
            self.chars += len(str(value))


def _is_token_ids(value: Any) -> bool:
    """[1, 2, 3] or [[1, 2], [3]]: pre-tokenised input."""
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    if isinstance(first, list):
        return all(isinstance(row, list) and all(_is_id(t) for t in row) for row in value)
    return all(_is_id(t) for t in value)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count_token_ids(value: list[Any]) -> int:
    if value and isinstance(value[0], list):
        return sum(len(row) for row in value)
    return len(value)
