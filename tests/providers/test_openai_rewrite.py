"""`model` is rewritten in pass-through bytes without decoding them, whatever the JSON
spacing, and never inside a string value."""

from __future__ import annotations

import orjson
import pytest

from truckllm.providers.openai import rewrite_model

ALIAS = orjson.dumps("team/alias")


@pytest.mark.parametrize("payload", [
    b'{"id":"x","model":"gpt-4o-2024-08-06","choices":[]}',                  # compact
    b'{"id": "x", "model": "gpt-4o", "choices": []}',                        # spaced
    b'{"model":"a\\"b","choices":[]}',                                       # escaped quote in the value
    b'{"model":"a\\\\","choices":[]}',                                      # ends in an escaped backslash
    b'{"model":"caf\\u00e9\\n","choices":[]}',                                 # other escapes
    b'{"model":"","choices":[]}',                                             # empty
    b'{"id":"x","choices":[{"delta":{"content":"\\"model\\":\\"no\\""}}],"model":"m"}',   # in a string first
])
def test_the_model_key_and_only_it_is_rewritten(payload: bytes) -> None:
    before = orjson.loads(payload)
    after = orjson.loads(rewrite_model(payload, ALIAS))
    assert after["model"] == "team/alias"
    assert {k: v for k, v in after.items() if k != "model"} == {k: v for k, v in before.items() if k != "model"}


def test_a_payload_without_model_is_unchanged() -> None:
    assert rewrite_model(b'{"id":"x"}', ALIAS) == b'{"id":"x"}'
