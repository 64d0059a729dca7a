"""A native Responses answer as the client gets it: the alias as its `model`, whatever
else the body holds, and the upstream's usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from truckllm.errors import UpstreamFailed
from truckllm.protocols.responses.native import parse_native_response
from truckllm.providers.base import CallContext
from truckllm.usage import Usage

USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 9,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 21}


def answer(**fields: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1700000000, "status": "completed",
            "error": None, "instructions": None, "model": "gpt-4o-mini",
            "output": [{"id": "msg_1", "type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hi \"model\": there",
                                     "annotations": []}]}],
            "tools": [], "usage": USAGE, **fields}


def context(**body: Any) -> CallContext:
    return CallContext("my-alias", "req-1", 0, False, False, {"model": "my-alias", **body})


def parsed(raw: bytes, ctx: CallContext | None = None) -> tuple[dict[str, Any], Usage | None]:
    result = parse_native_response(raw, ctx or context())
    return orjson.loads(result.body), result.usage


@pytest.mark.parametrize("raw", [
    orjson.dumps(answer()),
    orjson.dumps(answer(), option=orjson.OPT_INDENT_2),                   # spaced
    orjson.dumps(answer()).replace(b'"model":', b'"model" :  '),
    # a nested `model` before and after the top-level one
    orjson.dumps({"tools": [{"type": "image_generation", "model": "gpt-image-1"}], **answer()}),
    orjson.dumps(answer(tools=[{"type": "image_generation", "model": "gpt-image-1"}])),
    orjson.dumps(answer(output=[], instructions="answer with \"model\":\"x\" please")),
    orjson.dumps({**answer(), "model": "weird \"model\" \\"}),
    orjson.dumps(answer(output=[{"type": "model"}])),
])
def test_the_top_level_model_is_the_alias_and_nothing_else_changes(raw: bytes) -> None:
    sent = orjson.loads(raw)
    got, usage = parsed(raw)
    assert got == {**sent, "model": "my-alias"}
    assert usage == Usage(12, 9, 2)


def test_the_upstream_bytes_are_kept_when_only_the_model_differs() -> None:
    raw = orjson.dumps(answer())
    result = parse_native_response(raw, context())
    assert result.body == raw.replace(b'"model":"gpt-4o-mini"', b'"model":"my-alias"')


def test_a_follow_up_names_the_previous_response() -> None:
    got, _ = parsed(orjson.dumps(answer()), context(previous_response_id="resp_0"))
    assert got == {**answer(), "model": "my-alias", "previous_response_id": "resp_0"}


def test_an_answer_without_a_model_gets_one() -> None:
    sent = answer()
    del sent["model"]
    got, _ = parsed(orjson.dumps(sent))
    assert got == {**sent, "model": "my-alias"}


@pytest.mark.parametrize("raw", [b"[]", b'{"object": "chat.completion"}', b"not json"])
def test_a_body_that_is_not_a_response_is_an_upstream_failure(raw: bytes) -> None:
    with pytest.raises(UpstreamFailed):
        parse_native_response(raw, context())
