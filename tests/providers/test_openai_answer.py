"""A plain OpenAI answer goes to the client as it came (only `model` rewritten) with its
usage counted wherever `usage` sits and however the JSON is spaced; a 200 whose body is not
an answer (not JSON, not an object, `choices` or `data` not a list of objects) is refused
as an upstream failure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from truckllm.errors import UpstreamFailed
from truckllm.providers import openai
from truckllm.providers.base import CallContext, Operation, Target
from truckllm.usage import Usage

TARGET = Target("up", "openai", "gpt-4o", "http://upstream/v1", {})
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
         "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0}}
CHOICES = [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]


def make_context(body: dict[str, Any] | None = None) -> CallContext:
    return CallContext("team/alias", "req_1", 1_700_000_000, False, False, body or {})


def parse(raw: bytes, op: Operation = Operation.CHAT,
          body: dict[str, Any] | None = None) -> tuple[Any, Usage | None]:
    parsed = openai.parse_response(op, raw, TARGET, make_context(body))
    return orjson.loads(parsed.body), parsed.usage


def make_answer(**fields: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o", "choices": CHOICES,
            **fields}


@pytest.mark.parametrize("raw", [
    orjson.dumps(make_answer(usage=USAGE)),                                        # compact, usage last
    orjson.dumps(make_answer(usage=USAGE), option=orjson.OPT_INDENT_2),             # indented
    b'\r\n  ' + orjson.dumps(make_answer(usage=USAGE)).replace(b'"usage":', b'"usage" \t:\n ') + b' \n',
    orjson.dumps({"usage": USAGE, **make_answer()}),                               # usage first
    orjson.dumps({**make_answer(), "usage": USAGE, "service_tier": "default",       # usage not last,
                  "system_fingerprint": "fp_1"}),                                # as OpenAI sends it
    # "usage" inside strings, and nested `usage` objects: only the top-level one counts
    orjson.dumps(make_answer(usage=USAGE, note='say "usage": {"prompt_tokens": 999}')),
    orjson.dumps({**make_answer(usage=USAGE), 'x"usage': {"prompt_tokens": 999}}),
    orjson.dumps({**make_answer(usage=USAGE), "extra": {"usage": {"prompt_tokens": 999}}}),
    orjson.dumps(make_answer(usage={**USAGE, "by_part": {"usage": {"prompt_tokens": 999}}})),
])
def test_usage_is_counted_wherever_it_sits(raw: bytes) -> None:
    body, usage = parse(raw)
    assert usage == Usage(12, 9, 4)
    assert body == {**orjson.loads(raw), "model": "team/alias"}


@pytest.mark.parametrize("raw", [
    orjson.dumps(make_answer()),                                        # no usage
    orjson.dumps(make_answer(usage=None)),                              # usage null, last
    orjson.dumps({"usage": None, **make_answer()}),                     # usage null, first
    orjson.dumps(make_answer(usage="12 tokens")),                       # not an object
    orjson.dumps({**make_answer(), "extra": {"usage": USAGE}}),         # only a nested one
])
def test_an_answer_without_a_usage_object_has_no_usage(raw: bytes) -> None:
    body, usage = parse(raw)
    assert usage is None
    assert body["choices"] == CHOICES


@pytest.mark.parametrize(("raw", "problem"), [
    (b"<html><body>Bad gateway</body></html>", "not JSON"),
    (b"upstream is warming up", "not JSON"),
    (b"", "not JSON"),
    (b"   ", "not JSON"),
    (orjson.dumps(make_answer(usage=USAGE))[:-1], "not JSON"),               # cut off before the last }
    (orjson.dumps(make_answer(usage=USAGE))[:-40], "not JSON"),              # cut off inside usage
    (b'{"id":"x","usage":{"prompt_tokens":1}', "not JSON"),            # last } missing
    (b'{"id":"x","usage":{"prompt_tokens":1}}}', "not JSON"),          # one } too many
    (b'{"id":"x","usage":{"prompt_tokens":1},}', "not JSON"),          # trailing comma
    (b'{"id":"x","usage":{"prompt_tokens":1}} {}', "not JSON"),        # bytes after the object
    (b'{"id":"x","usage":}', "not JSON"),                              # no value
    (b'{"id":"x"}\x0c', "not JSON"),                                   # not JSON whitespace
    (orjson.dumps([make_answer(usage=USAGE)]), "unexpected JSON shape"),     # an array
    (b'"usage"', "unexpected JSON shape"),
    (orjson.dumps(make_answer(choices="nope")), "unexpected shape"),         # choices not a list
    (orjson.dumps(make_answer(choices=["nope"])), "unexpected shape"),       # nor of objects
    (orjson.dumps({"id": "x", "usage": USAGE}), "unexpected shape"),         # no choices at all
])
def test_a_200_that_is_not_an_answer_is_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(UpstreamFailed, match=problem):
        parse(raw)


def test_embeddings_need_a_list_of_vectors() -> None:
    with pytest.raises(UpstreamFailed, match="unexpected shape"):
        parse(orjson.dumps({"object": "list", "data": "nope"}), Operation.EMBEDDINGS)


def test_floats_asked_for_in_base64_are_encoded() -> None:
    raw = orjson.dumps({"object": "list", "model": "text-embedding-3-small",
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 1.0]}],
                        "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    body, usage = parse(raw, Operation.EMBEDDINGS, {"encoding_format": "base64"})
    assert body["data"][0]["embedding"] == "AAAAPwAAgD8="
    assert body["model"] == "team/alias"
    assert usage == Usage(3, 0, 0)
    body, usage = parse(raw, Operation.EMBEDDINGS, {})
    assert body["data"][0]["embedding"] == [0.5, 1.0]
    assert usage == Usage(3, 0, 0)
