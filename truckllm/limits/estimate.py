"""A fast estimate of a request's prompt tokens, reserved against tpm before the call.

Pure; no tokenizer. The estimate is only a reservation: the real usage the upstream
reports replaces it when the request ends (truckllm.limits.limiter reconciles).

The rule (docs/limits.md repeats it): in the prompt-bearing fields of the OpenAI (or
Anthropic) request body, count the characters of every string and number, object keys
included, and divide by 4, rounding up (English text averages about 4 characters per
token; the keys stand in for the few tokens of per-message overhead). Media parts
(images, audio, files) count a flat 85 tokens each instead of their base64 text, and an
array of token ids (`prompt` or `input` as integers) counts one token per id.

A stream that ends without the upstream's usage (the client left before the usage chunk,
the upstream failed mid-stream, or never reports stream usage) is not free: its usage is
estimated as the prompt estimate plus the generated text it streamed, by the same
characters / 4 rule (`stream_usage`).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from truckllm.usage import Usage

CHARS_PER_TOKEN = 4
MEDIA_PART_TOKENS = 85
PROMPT_FIELDS = ("messages", "prompt", "input", "system", "instructions", "tools", "functions")
_TOKEN_ID_FIELDS = frozenset({"prompt", "input"})
_MEDIA_PART_TYPES = frozenset({"image_url", "image", "input_audio", "audio", "file", "document"})
_NOT_GENERATED = frozenset({"role", "type", "id", "index"})   # delta keys that are not output


class PromptEstimate:
    """One request's prompt estimate, worked out on first use.

    Only a tpm limit (client key, gateway or upstream key) and a stream cut short before
    its usage read it, so a request that meets neither never walks its body.
    """

    __slots__ = ("_body", "_tokens")

    def __init__(self, body: Any, tokens: int | None = None) -> None:
        self._body = body
        self._tokens = tokens

    @classmethod
    def known(cls, tokens: int) -> PromptEstimate:
        return cls(None, tokens)

    @property
    def tokens(self) -> int:
        tokens = self._tokens
        if tokens is None:
            tokens = self._tokens = estimate_prompt_tokens(self._body)
            self._body = None
        return tokens


NO_PROMPT = PromptEstimate.known(0)     # a request with no prompt to estimate


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
            part_type = value.get("type")
            # (A client's `type` may be any JSON value, a list say: only a string is looked up.)
            if part_type.__class__ is str and part_type in _MEDIA_PART_TYPES:
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


def streamed_text_chars(payload: bytes) -> int:
    """Characters of generated output in one stream payload: an OpenAI chunk (`choices[].delta`
    or `choices[].text`) or an Anthropic event (`delta`). 0 for anything else."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(chunk, dict):
        return 0
    choices = chunk.get("choices")
    if isinstance(choices, list):
        return sum(_generated_chars(choice.get("delta")) + _generated_chars(choice.get("text"))
                   for choice in choices if isinstance(choice, dict))
    return _generated_chars(chunk.get("delta"))


def _generated_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_generated_chars(v) for k, v in value.items() if k not in _NOT_GENERATED)
    if isinstance(value, list):
        return sum(_generated_chars(item) for item in value)
    return 0


def stream_usage(reported: Usage | None, *, complete: bool, prompt_estimate: int,
                 text_chars: int) -> tuple[Usage | None, bool]:
    """The usage to charge for a stream, and whether it is (partly) an estimate.

    A complete stream with reported usage is charged exactly that. Otherwise what is
    missing is estimated: the prompt from the admission estimate, the completion from the
    text streamed so far (never less than what the upstream already reported).
    """
    if reported is not None and complete:
        return reported, False
    streamed = math.ceil(text_chars / CHARS_PER_TOKEN)
    if reported is None:
        return Usage(prompt_tokens=prompt_estimate, completion_tokens=streamed), True
    if reported.prompt_tokens and reported.completion_tokens >= streamed:
        return reported, False
    return Usage(prompt_tokens=reported.prompt_tokens or prompt_estimate,
                 completion_tokens=max(reported.completion_tokens, streamed),
                 cache_read_tokens=reported.cache_read_tokens,
                 cache_write_tokens=reported.cache_write_tokens), True
