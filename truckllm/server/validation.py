"""Client request bodies: size limit, JSON decoding and type checks of the fields
TruckLLM reads. Every other field goes upstream untouched."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import BodyPartReader, web

from truckllm.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from truckllm.providers.shared.media import MultipartField

_MIB = 1024 * 1024
_T = TypeVar("_T")
_NUMBER = (int, float)

# field -> (accepted types, required). None is accepted for optional fields, as OpenAI does.
_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "chat": {
        "model": ((str,), True), "messages": ((list,), True), "stream": ((bool,), False),
        "stream_options": ((dict,), False), "n": ((int,), False), "max_tokens": ((int,), False),
        "max_completion_tokens": ((int,), False), "temperature": (_NUMBER, False),
        "top_p": (_NUMBER, False), "tools": ((list,), False), "functions": ((list,), False),
        "stop": ((str, list), False), "response_format": ((dict,), False),
    },
    "completions": {
        "model": ((str,), True), "prompt": ((str, list), True), "stream": ((bool,), False),
        "stream_options": ((dict,), False), "n": ((int,), False), "max_tokens": ((int,), False),
        "temperature": (_NUMBER, False), "top_p": (_NUMBER, False), "stop": ((str, list), False),
    },
    "embeddings": {
        "model": ((str,), True), "input": ((str, list), True),
        "encoding_format": ((str,), False), "dimensions": ((int,), False),
    },
    "audio_transcriptions": {"model": ((str,), True), "fields": ((list,), True)},   # multipart
    "audio_translations": {"model": ((str,), True), "fields": ((list,), True)},
    "audio_speech": {"model": ((str,), True), "input": ((str,), True), "voice": ((str, dict), True)},
    "images": {"model": ((str,), True), "prompt": ((str,), True), "n": ((int,), False)},
    "count_tokens": {   # POST /v1/messages/count_tokens (anthropic upstreams only)
        "model": ((str,), True), "messages": ((list,), True), "system": ((str, list), False),
        "tools": ((list,), False), "tool_choice": ((dict,), False),
    },
    "responses": {      # the OpenAI Responses API (POST /v1/responses)
        "model": ((str,), True), "input": ((str, list), False), "instructions": ((str,), False),
        "stream": ((bool,), False), "store": ((bool,), False), "tools": ((list,), False),
        "max_output_tokens": ((int,), False), "temperature": (_NUMBER, False),
        "top_p": (_NUMBER, False), "previous_response_id": ((str,), False),
        "metadata": ((dict,), False), "text": ((dict,), False), "reasoning": ((dict,), False),
        "include": ((list,), False), "parallel_tool_calls": ((bool,), False),
        "background": ((bool,), False),
    },
    "messages": {       # the Anthropic Messages API (POST /v1/messages)
        "model": ((str,), True), "messages": ((list,), True), "max_tokens": ((int,), True),
        "stream": ((bool,), False), "system": ((str, list), False), "tools": ((list,), False),
        "tool_choice": ((dict,), False), "stop_sequences": ((list,), False),
        "temperature": (_NUMBER, False), "top_p": (_NUMBER, False), "metadata": ((dict,), False),
    },
}
# Integer fields with the ranges OpenAI enforces; a value outside is refused here rather
# than costing an upstream call (or, with n or dimensions, a huge answer).
_BOUNDS: dict[str, tuple[int, int | None]] = {
    "n": (1, 128), "max_tokens": (1, None), "max_completion_tokens": (1, None),
    "dimensions": (1, None), "max_output_tokens": (1, None),
}
_REQUIRED = {op: tuple(name for name, (_, required) in fields.items() if required)
             for op, fields in _FIELDS.items()}
# field -> (the classes its value may have, its bounds): what the fast check reads per
# field. Exact classes, not isinstance: a body holds only JSON's own types (orjson's, or
# the dict read_multipart builds), and `bool`, a subclass of int in Python, is not an
# integer in JSON, so `"n": true` is refused.
_RULES = {op: {name: (frozenset(types), _BOUNDS.get(name)) for name, (types, _) in fields.items()}
          for op, fields in _FIELDS.items()}
_TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", bool: "a boolean",
               int: "an integer", float: "a number"}


async def read_json(request: web.Request, max_body_mb: float,
                    timeout_s: float | None = None) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 (413 past `max_body_mb`) saying what is
    wrong with it."""
    limit = int(max_body_mb * _MIB)
    content = request.content
    if content.is_eof():
        # The whole body has arrived (a small one comes with its headers): taken from
        # aiohttp's buffer in one piece, without its read loop.
        raw = content.read_nowait()
        if len(raw) > limit:
            raise _too_large(max_body_mb)
    else:
        raw = await _within(_read_body(request, limit, max_body_mb), timeout_s)
    if not raw or raw.isspace():       # no stripped copy of the body to find out
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:    # else too few brackets to be too deep
        _check_depth(body)
    return body


# Deeper than any real request (tool schemas nest a few dozen levels at most); deeper
# bodies would break the recursive walks downstream (orjson.dumps stops at 255 levels).
MAX_JSON_DEPTH = 64


def _check_depth(body: dict[str, Any]) -> None:
    """400 for a body nested deeper than MAX_JSON_DEPTH arrays/objects."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


async def read_multipart(request: web.Request, max_body_mb: float,
                         timeout_s: float | None = None) -> dict[str, Any]:
    """A multipart/form-data upload as {"model": ..., "fields": [MultipartField, ...]}."""
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidRequest("This endpoint takes a multipart/form-data upload.")
    return await _within(_read_multipart(request, max_body_mb), timeout_s)


async def _within(read: Awaitable[_T], timeout_s: float | None) -> _T:
    """What `read` reads from the client, in `timeout_s` at most (`server.body_timeout_s`):
    a body that trickles in, or a chunked one that never ends, is not held forever."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None


async def _read_multipart(request: web.Request, max_body_mb: float) -> dict[str, Any]:
    limit, size = int(max_body_mb * _MIB), 0
    fields: list[MultipartField] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise InvalidRequest("Nested or unnamed multipart parts are not accepted.")
        value = await part.read(decode=False)
        size += len(value)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the {max_body_mb:g} MiB limit.")
        fields.append(MultipartField(part.name, bytes(value), part.filename,
                                     part.headers.get("Content-Type") if part.filename else None))
    model = next((f.value.decode("utf-8", "replace") for f in fields if f.name == "model"), None)
    if not any(f.name == "file" and f.filename is not None for f in fields):
        raise InvalidRequest("Missing required parameter: 'file' (an uploaded file).", param="file")
    return {"model": model, "fields": fields}


def _read_body(request: web.Request, limit: int, max_body_mb: float) -> Awaitable[bytes]:
    """The body, for the caller to await: with a Content-Length, aiohttp's own read;
    without one, read in chunks so that the limit holds while reading."""
    length = request.content_length
    if length is None:
        return _read_chunked(request, limit, max_body_mb)
    if length > limit:
        raise _too_large(max_body_mb)
    return request.read()


async def _read_chunked(request: web.Request, limit: int, max_body_mb: float) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _too_large(max_body_mb)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(max_body_mb: float) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the {max_body_mb:g} MiB limit.")


def check_fields(op: str, body: dict[str, Any]) -> None:
    if not _fields_look_valid(op, body):
        _raise_first_field_error(op, body)
    if op == "chat":
        messages = body["messages"]
        # Exact classes, as in _RULES: a body holds only JSON's own types.
        for message in messages:
            if message.__class__ is not dict or message.get("role").__class__ is not str:
                _raise_message_error(messages, message)
            if message.get("content").__class__ is list:
                _check_parts(messages, message)
        if not messages:
            raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    elif op == "messages" or op == "count_tokens":
        for message in body["messages"]:
            if message.__class__ is dict and message.get("content").__class__ is list:
                _check_parts(body["messages"], message)
        if body.get("system").__class__ is list:
            _check_part_list(body["system"], "system")
    elif op == "embeddings":
        if body.get("encoding_format") not in (None, "float", "base64"):
            raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        if body["input"] in ("", []):
            raise InvalidRequest("'input' must not be empty.", param="input")


def _fields_look_valid(op: str, body: dict[str, Any]) -> bool:
    """The common case, checked cheaply: a body names a few of the known fields, so walk
    the body (types and ranges at once) rather than the tables. Any doubt goes to the
    ordered check, which finds the first problem in table order: the error a client
    sees stays the same."""
    if not body.get("model"):
        return False
    rules = _RULES[op]
    for name in _REQUIRED[op]:
        if body.get(name) is None:
            return False
    for name, value in body.items():
        rule = rules.get(name)
        if rule is None or value is None:
            continue
        classes, bounds = rule
        if value.__class__ not in classes:
            return False
        if bounds is not None and _out_of_bounds(value, bounds):
            return False
    return True


def _raise_first_field_error(op: str, body: dict[str, Any]) -> None:
    for name, (types, required) in _FIELDS[op].items():
        value = body.get(name)
        if value is None:
            if required:
                raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
            continue
        if value.__class__ not in _RULES[op][name][0]:
            expected = " or ".join(_TYPE_NAMES[t] for t in types)
            raise InvalidRequest(f"Invalid type for '{name}': expected {expected}.", param=name)
    if not body["model"]:
        raise InvalidRequest("'model' must not be empty.", param="model")
    for name, (low, high) in _BOUNDS.items():
        value = body.get(name)
        if value is not None and _out_of_bounds(value, (low, high)):
            allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise InvalidRequest(f"'{name}' must be {allowed}; got {value}.", param=name)


def _check_parts(messages: list[Any], message: dict[str, Any]) -> None:
    """400 for a content part that is not an object with a string `type`: every reader
    downstream (translators, the prompt estimate) relies on it."""
    parts = message["content"]
    if all(part.__class__ is dict and part.get("type").__class__ is str for part in parts):
        return
    _check_part_list(parts, f"messages[{messages.index(message)}].content")


def _check_part_list(parts: list[Any], where: str) -> None:
    for index, part in enumerate(parts):
        if part.__class__ is not dict or part.get("type").__class__ is not str:
            raise InvalidRequest(f"{where}[{index}] must be an object with a string 'type'.",
                                 param=f"{where}[{index}]")


def _out_of_bounds(value: Any, bounds: tuple[int, int | None]) -> bool:
    low, high = bounds
    return isinstance(value, int) and (value < low or (high is not None and value > high))


def _raise_message_error(messages: list[Any], message: Any) -> None:
    # Counted only now, not by enumerate() on every request. The first message equal to
    # this one is this one: an earlier, valid message is a dict with a string role, and
    # only a dict with the same items equals it.
    index = messages.index(message)
    raise InvalidRequest(f"messages[{index}] must be an object with a string 'role'.",
                         param=f"messages[{index}]")
