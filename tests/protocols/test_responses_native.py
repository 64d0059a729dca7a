"""A native Responses answer or stream as the client gets it: the alias as its `model`,
whatever else the body holds, and the upstream's usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from truckllm.errors import GatewayError, UpstreamFailed
from truckllm.protocols.responses.native import NativeResponsesStream, parse_native_response
from truckllm.providers.base import CallContext, SSEEvent
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


def event(kind: str, **fields: Any) -> tuple[bytes, bytes]:
    return kind.encode(), orjson.dumps({"type": kind, **fields})


IN_PROGRESS = answer(status="in_progress", output=[], usage=None)
CREATED = event("response.created", sequence_number=0, response=IN_PROGRESS)
STARTED = event("response.in_progress", sequence_number=1, response=IN_PROGRESS)
DELTA = event("response.output_text.delta", sequence_number=2, item_id="msg_1", delta="Hi")
ITEM_DONE = event("response.output_item.done", sequence_number=3, item=answer()["output"][0])
COMPLETED = event("response.completed", sequence_number=4, response=answer())
ERROR = event("error", code="server_error", message="boom", sequence_number=5)
FOREIGN = event("codex.rate_limits", rate_limits={})
NESTED = event("response.created", sequence_number=0,
               response={**IN_PROGRESS, "tools": [{"type": "image_generation", "model": "gpt-image-1"}]})
MISNAMED = (b"response.output_text.delta", DELTA[1].replace(b"output_text.delta", b"output_text.added"))
SPACED = (COMPLETED[0], COMPLETED[1].replace(b'"model":', b'"model": '))
ESCAPED = (COMPLETED[0], COMPLETED[1].replace(b'"gpt-4o-mini"', b'"gpt-4o\\u002dmini"'))
NO_MODEL = event("response.completed", sequence_number=4, response={**answer(), "model": None})
QUOTED = (b'response.x","a', orjson.dumps({"type": "response.x", "a": 1}))
BROKEN = (COMPLETED[0], COMPLETED[1][:-5])
NOT_AN_OBJECT = event("response.completed", sequence_number=4, response=[])
# Reads the stream takes whole: what a stream's reads usually are.
TAKEN_WHOLE = [[CREATED], [CREATED, STARTED], [DELTA], [DELTA, DELTA, DELTA], [ITEM_DONE],
               [DELTA, ITEM_DONE, COMPLETED], [COMPLETED]]
# Reads it may leave to `feed`, which must come to the same.
OTHERS = [[ERROR], [DELTA, ERROR], [FOREIGN], [DELTA, FOREIGN, DELTA], [NESTED], [MISNAMED], [SPACED],
          [DELTA, SPACED], [ESCAPED], [NO_MODEL], [QUOTED], [BROKEN], [DELTA, BROKEN], [NOT_AN_OBJECT]]


def fed_one_by_one(stream: NativeResponsesStream, events: list[tuple[bytes, bytes]]) -> bytes | Exception:
    out = b""
    try:
        for name, data in events:
            out += b"".join(b"event: %b\ndata: %b\n\n" % (sent.event.encode(), sent.data)
                            for sent in stream.feed(SSEEvent(name.decode(), data)) if sent.event)
    except GatewayError as exc:
        return exc
    return out


def ended(stream: NativeResponsesStream) -> bool:
    try:
        stream.close()
    except UpstreamFailed:
        return False
    return True


@pytest.mark.parametrize("alias", ["my-alias", "gpt-4o-mini"])
@pytest.mark.parametrize("previous", [None, "resp_0"])
@pytest.mark.parametrize("first", [[], [CREATED]], ids=["first read", "later read"])
@pytest.mark.parametrize("events", TAKEN_WHOLE + OTHERS)
def test_a_read_taken_whole_comes_to_what_feed_makes_of_its_events(
        events: list[tuple[bytes, bytes]], first: list[tuple[bytes, bytes]], previous: str | None,
        alias: str) -> None:
    body = {"model": alias, "previous_response_id": previous} if previous else {"model": alias}
    stored: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    whole, one_by_one = (NativeResponsesStream(CallContext(alias, "req", 1, True, False, body,
                                                           on_response=kept.append))
                         for kept in stored)
    for stream in (whole, one_by_one):
        fed_one_by_one(stream, first)
    read = b"".join(b"event: %b\ndata: %b\n\n" % named for named in events)
    out = whole.feed_named_read(read, events)
    if events in TAKEN_WHOLE and (previous is None or all(b'"response"' not in data for _, data in events)):
        assert out is not None
    if out is None:         # the relay feeds the same events one by one
        out = fed_one_by_one(whole, events)
    expected = fed_one_by_one(one_by_one, events)
    if isinstance(expected, Exception):
        assert isinstance(out, Exception) and str(out) == str(expected)
    else:
        assert out == expected
    assert whole.usage == one_by_one.usage
    assert ended(whole) == ended(one_by_one)
    assert stored[0] == stored[1]
    failure = UpstreamFailed("cut")
    assert whole.fail(failure) == one_by_one.fail(failure)


def test_a_stream_event_keeps_the_upstream_bytes_but_the_model() -> None:
    stream = NativeResponsesStream(context())
    [sent] = stream.feed(SSEEvent("response.completed", COMPLETED[1]))
    assert sent.data == COMPLETED[1].replace(b'"model":"gpt-4o-mini"', b'"model":"my-alias"')
