"""Reads an OpenAI chat request into a provider-neutral conversation that the
translating adapters (anthropic, gemini) render into their own dialects.

Pure: no I/O. Imports only truckllm.errors. Every refusal is an InvalidRequest naming the
offending `param`, raised before anything is sent upstream.

What it normalises once, so each adapter does not have to:
- system and developer messages -> `system` texts, in order;
- tool and legacy `function` messages -> ToolResult blocks in a user turn, carrying the
  function name looked up from the assistant call with the same id;
- legacy `functions` / `function_call` / assistant `function_call` -> tools and tool calls
  with deterministic synthetic ids (`call_legacy_<message index>`);
- consecutive same-role turns merged, tool results first in a user turn, empty text dropped.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from truckllm.errors import InvalidRequest

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]+)*?),(?P<data>.*)", re.S)


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Media:
    """An image, audio clip or file: inline base64 (`data` + `mime`) or a remote `url`."""

    kind: Literal["image", "audio", "file"]
    mime: str | None = None
    data: str | None = None
    url: str | None = None
    param: str = "messages"     # where the client put it, for a refusal naming it


@dataclass(frozen=True, slots=True)
class ToolUse:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_call_id: str
    name: str
    content: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    """An assistant message's `reasoning_state` (truckllm.providers.shared.reasoning): the
    provider's own reasoning blocks, sent back in place by that provider type's adapter
    and left out by the others."""

    state: dict[str, Any]


Block = Text | Media | ToolUse | ToolResult | Reasoning


@dataclass(slots=True)
class Turn:
    role: Literal["user", "assistant"]
    blocks: list[Block]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    system: list[str]
    turns: list[Turn]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    response_format: dict[str, Any] | None = None   # None for {"type": "text"}
    n: int = 1
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    logprobs: bool = False
    audio_output: bool = False          # `modalities` asks for audio, or `audio` is set
    legacy_functions: bool = False
    reasoning_effort: str | None = None


def uses_legacy_functions(body: Mapping[str, Any]) -> bool:
    """True when the client speaks the legacy `functions` dialect (answers use function_call)."""
    return bool(body.get("functions")) and not body.get("tools")


def read_chat_request(body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    system, turns = _read_messages(messages)
    return ChatRequest(
        system=system,
        turns=turns,
        tools=_read_tools(body),
        tool_choice=_read_tool_choice(body),
        parallel_tool_calls=_optional(body, "parallel_tool_calls", bool),
        max_tokens=_max_tokens(body),
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        stop=_stop(body.get("stop")),
        response_format=_response_format(body.get("response_format")),
        n=_n(body.get("n")),
        seed=_optional(body, "seed", int),
        presence_penalty=_number(body, "presence_penalty"),
        frequency_penalty=_number(body, "frequency_penalty"),
        user=_optional(body, "user", str) or _optional(body, "safety_identifier", str),
        logprobs=bool(body.get("logprobs")),
        audio_output=bool(body.get("audio")) or "audio" in (body.get("modalities") or []),
        legacy_functions=uses_legacy_functions(body),
        reasoning_effort=_optional(body, "reasoning_effort", str),
    )


def refuse(provider_type: str, what: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by provider type {provider_type!r}", param=param,
                          code="unsupported_parameter")


# ---- messages ----------------------------------------------------------------------------


def _read_messages(messages: list[Any]) -> tuple[list[str], list[Turn]]:
    system: list[str] = []
    turns: list[Turn] = []
    names_by_id: dict[str, str] = {}
    legacy_ids: dict[str, str] = {}         # function name -> id of its latest legacy call
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), f"messages[{i}].content")
            if text:
                system.append(text)
        elif role == "user":
            _push(turns, "user", _user_blocks(message.get("content"), i))
        elif role == "assistant":
            blocks = _assistant_blocks(message, i, names_by_id, legacy_ids)
            _push(turns, "assistant", blocks)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest("a tool message needs 'tool_call_id'", param=f"messages[{i}].tool_call_id")
            content = _plain_text(message.get("content"), f"messages[{i}].content")
            _push(turns, "user", [ToolResult(call_id, names_by_id.get(call_id, ""), content)])
        elif role == "function":
            name = message.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest("a function message needs 'name'", param=f"messages[{i}].name")
            call_id = legacy_ids.get(name, f"call_legacy_{i}")
            content = _plain_text(message.get("content"), f"messages[{i}].content")
            _push(turns, "user", [ToolResult(call_id, name, content)])
        else:
            raise InvalidRequest(f"unknown message role {role!r}", param=f"messages[{i}].role")
    for turn in turns:
        if turn.role == "user":     # tool results first, as Anthropic and Gemini expect
            turn.blocks.sort(key=lambda block: 0 if isinstance(block, ToolResult) else 1)
    return system, turns


def _push(turns: list[Turn], role: Literal["user", "assistant"], blocks: list[Block]) -> None:
    blocks = [b for b in blocks if not (isinstance(b, Text) and not b.text.strip())]
    if all(isinstance(b, Reasoning) for b in blocks):
        return          # reasoning alone is no turn
    if not blocks:
        return
    if turns and turns[-1].role == role:
        turns[-1].blocks.extend(blocks)
    else:
        turns.append(Turn(role, blocks))


def _user_blocks(content: Any, i: int) -> list[Block]:
    if isinstance(content, str):
        return [Text(content)]
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or an array of parts", param=f"messages[{i}].content")
    blocks: list[Block] = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append(Text(part["text"]))
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), param))
        elif kind == "input_audio":
            blocks.append(_audio(part.get("input_audio"), param))
        elif kind == "file":
            blocks.append(_file(part.get("file"), param))
        else:
            raise InvalidRequest(f"unsupported content part type {kind!r}", param=f"{param}.type")
    return blocks


def _assistant_blocks(message: dict[str, Any], i: int, names_by_id: dict[str, str],
                      legacy_ids: dict[str, str]) -> list[Block]:
    blocks: list[Block] = []
    if isinstance(message.get("reasoning_state"), dict):
        blocks.append(Reasoning(message["reasoning_state"]))
    content = message.get("content")
    if content is not None:
        blocks.append(Text(_plain_text(content, f"messages[{i}].content")))
    if isinstance(message.get("refusal"), str) and content is None:
        blocks.append(Text(message["refusal"]))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest("'tool_calls' must be an array", param=f"messages[{i}].tool_calls")
    for j, call in enumerate(calls):
        param = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("a tool call needs 'function.name'", param=f"{param}.function")
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{i}_{j}"
        names_by_id[call_id] = function["name"]
        blocks.append(ToolUse(call_id, function["name"], _arguments(function.get("arguments"), param)))
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        call_id = f"call_legacy_{i}"
        legacy_ids[legacy["name"]] = call_id
        names_by_id[call_id] = legacy["name"]
        blocks.append(ToolUse(call_id, legacy["name"],
                              _arguments(legacy.get("arguments"), f"messages[{i}].function_call")))
    return blocks


def _arguments(raw: Any, param: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str | bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=f"{param}.arguments")
    return parsed


def _plain_text(content: Any, param: str) -> str:
    """String content, or the texts of a text-part array joined (system, tool, assistant)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
                texts.append(str(part.get("text") or part.get("refusal") or ""))
            else:
                raise InvalidRequest("only text parts are allowed here", param=param)
        return "".join(texts)
    raise InvalidRequest("'content' must be a string or an array of text parts", param=param)


def _image(image_url: Any, param: str) -> Media:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise InvalidRequest("'image_url.url' is required", param=f"{param}.image_url.url")
    if url.startswith("data:"):
        mime, data = parse_data_url(url, f"{param}.image_url.url")
        mime = "image/jpeg" if mime == "image/jpg" else mime
        return Media("image", mime=mime or "image/png", data=data, param=param)
    if url.startswith(("https://", "http://")):
        return Media("image", url=url, param=param)
    raise InvalidRequest("an image URL must be https:// or a data: URL", param=f"{param}.image_url.url")


def _audio(audio: Any, param: str) -> Media:
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise InvalidRequest("'input_audio.data' is required", param=f"{param}.input_audio")
    audio_format = audio.get("format")
    mime = {"wav": "audio/wav", "mp3": "audio/mp3"}.get(str(audio_format))
    if mime is None:
        raise InvalidRequest("'input_audio.format' must be wav or mp3", param=f"{param}.input_audio.format")
    return Media("audio", mime=mime, data=audio["data"], param=param)


def _file(file: Any, param: str) -> Media:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise InvalidRequest("only inline files ('file.file_data') can be translated", param=f"{param}.file")
    if not data_url.startswith("data:"):      # bare base64: OpenAI documents PDFs
        return Media("file", mime="application/pdf", data=data_url, param=param)
    mime, data = parse_data_url(data_url, f"{param}.file.file_data")
    return Media("file", mime=mime or "application/pdf", data=data, param=param)


def parse_data_url(url: str, param: str) -> tuple[str | None, str]:
    """(mime, base64 data) of a data: URL; percent-encoded payloads are re-encoded."""
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest("malformed data: URL", param=param)
    mime = match.group("mime").lower() if match.group("mime") else None
    data = match.group("data")
    if ";base64" not in match.group("params"):
        data = base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode("ascii")
    return mime, data


# ---- tools and parameters -----------------------------------------------------------------


def _read_tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for j, tool in enumerate(body.get("tools") or []):
        param = f"tools[{j}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest("only tools of type 'function' can be translated", param=f"{param}.type")
        tools.append(_tool_spec(tool.get("function"), f"{param}.function"))
    if not tools:
        for j, function in enumerate(body.get("functions") or []):
            tools.append(_tool_spec(function, f"functions[{j}]"))
    return tools


def _tool_spec(function: Any, param: str) -> ToolSpec:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest("a function needs a 'name'", param=f"{param}.name")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be a JSON Schema object", param=f"{param}.parameters")
    description = function.get("description")
    return ToolSpec(function["name"], description if isinstance(description, str) else None, parameters)


def _read_tool_choice(body: dict[str, Any]) -> ToolChoice | None:
    choice = body.get("tool_choice")
    param = "tool_choice"
    if choice is None and body.get("function_call") is not None:
        choice, param = body["function_call"], "function_call"
        if isinstance(choice, dict) and "name" in choice:
            choice = {"type": "function", "function": {"name": choice["name"]}}
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return ToolChoice("function", name)
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or a named function", param=param)


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
        return value
    return None


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"'{name}' must be a number", param=name)
    return value


def _optional(body: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequest(f"'{name}' has the wrong type", param=name)
    return value


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
    return [s for s in sequences if s.strip()]


def _n(n: Any) -> int:
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidRequest("'n' must be a positive integer", param="n")
    return n


def _response_format(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        if value is None:
            return None
        raise InvalidRequest("'response_format' must be an object", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        json_schema = value.get("json_schema")
        schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
        if not isinstance(json_schema, dict) or not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be an object",
                                 param="response_format.json_schema.schema")
        return {"type": "json_schema", "json_schema": {**json_schema, "schema": schema}}
    raise InvalidRequest("response_format type must be text, json_object or json_schema",
                         param="response_format.type")


# ---- legacy completions, answered through chat ------------------------------------------

_COMPLETION_FIELDS_KEPT = ("max_tokens", "temperature", "top_p", "stop", "n", "seed", "presence_penalty",
                           "frequency_penalty", "user", "stream", "stream_options")


def chat_body_from_completions(body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/completions body as a chat body with the prompt as one user message."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("only a single text prompt can be translated to chat for this provider",
                             param="prompt", code="unsupported_parameter")
    for name in ("echo", "suffix", "logprobs"):
        if body.get(name) not in (None, False):
            raise InvalidRequest(f"'{name}' cannot be honoured when completions are answered by chat",
                                 param=name, code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest("'best_of' cannot be honoured when completions are answered by chat",
                             param="best_of", code="unsupported_parameter")
    chat = {name: body[name] for name in _COMPLETION_FIELDS_KEPT if name in body}
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat
