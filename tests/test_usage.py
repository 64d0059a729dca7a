"""Usage read from an OpenAI `usage` object: counts that are not counts are 0."""

from __future__ import annotations

import pytest

from truckllm.usage import Usage


def test_reads_the_counts_and_the_cached_tokens() -> None:
    usage = Usage.from_openai({"prompt_tokens": 12, "completion_tokens": 5,
                               "prompt_tokens_details": {"cached_tokens": 4}})
    assert usage == Usage(12, 5, 4) and usage is not None and usage.total_tokens == 17


@pytest.mark.parametrize("count", [-1, 1.5, "7", True, None, 2 ** 63, 10 ** 30])
def test_a_count_that_is_not_a_count_is_zero(count: object) -> None:
    usage = Usage.from_openai({"prompt_tokens": count, "completion_tokens": 3})
    assert usage is not None and usage.prompt_tokens == 0 and usage.completion_tokens == 3

