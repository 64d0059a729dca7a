"""A Responses API request as an OpenAI chat request, for targets that do not speak the
Responses API: instructions and input items become messages, flat function tools become
chat's nested ones, custom (free-form) tools become functions of one string, namespace
tool groups are flattened (their calls are mapped back by `ToolNames`), and built-in tools
with no chat equivalent are left out and listed.

A `reasoning` item whose `encrypted_content` this process sealed (a translated answer's,
sent back by a stateless client or kept in the store) becomes the `reasoning_state` of the
assistant message after it (or, at the end of a turn, before it), so the provider gets its
own reasoning blocks back in place; any other reasoning item (a native one, one sealed
before a restart, a forged one) is left out.

Pure, no I/O. Imports only errors, protocols.responses.sealed and
providers.shared.reasoning. Refusals are
InvalidRequest naming the Responses field (`input[3].content[0].type`), raised before
anything goes upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from truckllm.errors import InvalidRequest
from truckllm.protocols.responses.sealed import unseal
from truckllm.providers.shared.reasoning import joined

# A namespace tool's functions are offered to chat targets as `<namespace>__<name>`.
NAMESPACE_SEPARATOR = "__"
# A custom (free-form input) tool is offered to chat targets as a function taking its
# input as one string; its calls come back as custom_tool_call items.
CUSTOM_PARAMETERS = {"type": "object", "required": ["input"], "properties": {
    "input": {"type": "string", "description": "The tool's input, as free-form text."}}}
# Request fields a chat request carries under the same name.
_SAME_NAME = ("temperature", "top_p", "user", "prompt_cache_key", "safety_identifier")
_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})


@dataclass(frozen=True, slots=True)
class ToolNames:
    """Chat function name -> (namespace, name) for the functions of namespace groups."""

    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    custom: frozenset[str] = frozenset()        # chat names of custom (free-form) tools

    def item_fields(self, chat_name: str) -> dict[str, str]:
        """`name` (and `namespace`) of a function_call item for a chat tool call's name."""
        found = self.namespaced.get(chat_name)
        if found is None:
            return {"name": chat_name}
        return {"name": found[1], "namespace": found[0]}


@dataclass(frozen=True, slots=True)
class ChatTranslation:
    chat: dict[str, Any]                 # the chat completions request body
    tool_names: ToolNames
    dropped_tools: tuple[str, ...]       # built-in tools left out (their `type`s, in order)


def to_chat_request(body: dict[str, Any]) -> ChatTranslation:
    """The chat request for a Responses request (whose `input` already holds the stored
    history of a `previous_response_id`, if any)."""
    refuse_background(body)
    tools, tool_names, dropped = _tools(body.get("tools"))
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string", param="instructions")
    messages += _messages(body.get("input"), tool_names)
    if not messages:
        raise InvalidRequest("'input' must hold at least one message or item", param="input")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if tools:
        chat["tools"] = tools
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
        choice = _tool_choice(body.get("tool_choice"), tool_names)
        if choice is not None:
            chat["tool_choice"] = choice
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in _SAME_NAME:
        if body.get(name) is not None:
            chat[name] = body[name]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("stream"):
        chat["stream"] = True
        # Usage is what the final response.completed event carries: always asked for.
        chat["stream_options"] = {"include_usage": True}
    return ChatTranslation(chat, tool_names, tuple(dropped))


def refuse_background(body: dict[str, Any]) -> None:
    """A `background: true` request refused: only a native Responses endpoint runs one."""
    if body.get("background"):
        raise InvalidRequest("background responses are only available on models served by the "
                             "Responses API natively", param="background",
                             code="unsupported_parameter")


# ---- tools --------------------------------------------------------------------------------


def tool_names(body: dict[str, Any]) -> ToolNames:
    """How the chat request names `body`'s namespaced and custom tools, to map calls back
    (without translating the rest of the request again)."""
    return _tools(body.get("tools"))[1]


def dropped_tools(body: dict[str, Any]) -> tuple[str, ...]:
    """The built-in tools a translation leaves out of `body`, by type, in order."""
    return tuple(_tools(body.get("tools"))[2])


def _tools(raw: Any) -> tuple[list[dict[str, Any]], ToolNames, list[str]]:
    if raw is None:
        return [], ToolNames(), []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    tools: list[dict[str, Any]] = []
    namespaced: dict[str, tuple[str, str]] = {}
    custom: set[str] = set()
    dropped: list[str] = []
    for j, tool in enumerate(raw):
        param = f"tools[{j}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest("a tool must be an object with a 'type'", param=f"{param}.type")
        if tool["type"] == "function":
            tools.append(_function(tool, param, None))
        elif tool["type"] == "custom":
            tools.append(_custom(tool, param, None))
            custom.add(tools[-1]["function"]["name"])
        elif tool["type"] == "namespace":
            namespace = tool.get("name")
            if not isinstance(namespace, str) or not namespace:
                raise InvalidRequest("a namespace needs a 'name'", param=f"{param}.name")
            for k, inner in enumerate(tool.get("tools") or []):
                inner_param = f"{param}.tools[{k}]"
                kind = inner.get("type") if isinstance(inner, dict) else None
                if kind == "function":
                    function = _function(inner, inner_param, namespace)
                elif kind == "custom":
                    function = _custom(inner, inner_param, namespace)
                    custom.add(function["function"]["name"])
                else:
                    dropped.append(f"{namespace}.{_type_of(inner)}")
                    continue
                namespaced[function["function"]["name"]] = (namespace, inner["name"])
                tools.append(function)
        else:
            # A built-in tool (web_search, file_search, custom, ...): no chat equivalent.
            dropped.append(tool["type"])
    return tools, ToolNames(namespaced, frozenset(custom)), dropped


def _type_of(tool: Any) -> str:
    return str(tool.get("type")) if isinstance(tool, dict) else "tool"


def _function(tool: dict[str, Any], param: str, namespace: str | None) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a function tool needs a 'name'", param=f"{param}.name")
    function: dict[str, Any] = {
        "name": name if namespace is None else namespace + NAMESPACE_SEPARATOR + name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise InvalidRequest("'parameters' must be a JSON Schema object", param=f"{param}.parameters")
        function["parameters"] = parameters
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _custom(tool: dict[str, Any], param: str, namespace: str | None) -> dict[str, Any]:
    """A custom tool as a function of one string; its grammar, if any, is told the model
    in the description (chat has no grammar-constrained input)."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a custom tool needs a 'name'", param=f"{param}.name")
    given = tool.get("description")
    description: str = given if isinstance(given, str) else ""
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax") if isinstance(fmt.get("syntax"), str) else "grammar"
        description += f"\n\nThe input must follow this {syntax} grammar:\n{fmt['definition']}"
    return {"type": "function", "function": {
        "name": name if namespace is None else namespace + NAMESPACE_SEPARATOR + name,
        "description": description.strip() or f"The {name} tool.", "parameters": CUSTOM_PARAMETERS}}


def custom_input(arguments: str) -> str:
    """A custom tool call's input from the chat call's arguments (`{"input": ...}`); the
    arguments as they are when the model did not wrap its input."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    value = parsed.get("input") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else arguments


def _tool_choice(choice: Any, names: ToolNames) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
            name = choice["name"]
            if isinstance(choice.get("namespace"), str):
                name = choice["namespace"] + NAMESPACE_SEPARATOR + name
            return {"type": "function", "function": {"name": name}}
        if choice.get("type") == "allowed_tools":
            mode = choice.get("mode")
            return mode if mode in ("auto", "required") else "auto"
        return "auto"          # a built-in tool chosen: it was left out, any tool may do
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or a tool", param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    fmt = text["format"]
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("'text.format.schema' must be an object", param="text.format.schema")
        schema: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if isinstance(fmt.get("strict"), bool):
            schema["strict"] = fmt["strict"]
        if isinstance(fmt.get("description"), str):
            schema["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("text.format type must be text, json_object or json_schema",
                         param="text.format.type")


# ---- input --------------------------------------------------------------------------------


def _messages(raw: Any, names: ToolNames) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise InvalidRequest("'input' must be a string or an array of items", param="input")
    messages: list[dict[str, Any]] = []
    reasoning: dict[str, Any] | None = None      # sealed state waiting for its assistant message
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest("an input item must be an object", param=param)
        kind = item.get("type", "message")
        if kind in ("message", "function_call_output", "custom_tool_call_output") and item.get("role") != "assistant":
            reasoning = _trailing(messages, reasoning)
        if kind == "message":
            message = _message(item, param)
            if message is not None and message["role"] == "assistant" and reasoning is not None:
                message["reasoning_state"], reasoning = reasoning, None
            if message is not None:
                messages.append(message)
        elif kind == "function_call":
            _add_call(messages, _call(item, param, names), reasoning)
            reasoning = None
        elif kind == "custom_tool_call":
            _add_call(messages, _call({**item, "arguments": {"input": _str(item, "input", param)}},
                                      param, names), reasoning)
            reasoning = None
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(_call_output(item, param))
        elif kind == "reasoning":
            reasoning = joined(reasoning, unseal(item.get("encrypted_content")))
        else:
            raise InvalidRequest(f"input items of type {kind!r} cannot be sent to this model",
                                 param=f"{param}.type", code="unsupported_parameter")
    _trailing(messages, reasoning)
    return messages


def _trailing(messages: list[dict[str, Any]], reasoning: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reasoning that follows an assistant message and its calls (a provider's state known
    only once the answer was whole: a Gemini text part's signature) joins that message's;
    what is left still waits for an assistant message."""
    last = messages[-1] if messages else None
    if reasoning is None or last is None or last["role"] != "assistant":
        return reasoning
    last["reasoning_state"] = joined(last.get("reasoning_state"), reasoning)
    return None


def _message(item: dict[str, Any], param: str) -> dict[str, Any] | None:
    role = item.get("role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        raise InvalidRequest("role must be user, assistant, system or developer", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or an array", param=f"{param}.content")
    parts = [_part(part, f"{param}.content[{k}]") for k, part in enumerate(content)]
    if role != "user":
        # Chat takes only text from assistant, system and developer messages.
        texts = [p["text"] for p in parts if p["type"] == "text"]
        if len(texts) != len(parts):
            raise InvalidRequest(f"{role} messages may hold only text", param=f"{param}.content")
        return {"role": role, "content": "".join(texts)} if texts else None
    return {"role": role, "content": parts}


def _part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest("a content part must be an object", param=param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text"):
        return {"type": "text", "text": _str(part, "text", param)}
    if kind == "refusal":
        return {"type": "text", "text": _str(part, "refusal", param)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise InvalidRequest("only images given by 'image_url' (a URL or data: URL) can be "
                                 "sent to this model", param=f"{param}.image_url")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str):
            raise InvalidRequest("only inline files ('file_data') can be sent to this model",
                                 param=f"{param}.file_data")
        file: dict[str, Any] = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise InvalidRequest(f"content parts of type {kind!r} cannot be sent to this model",
                         param=f"{param}.type", code="unsupported_parameter")


def _str(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=f"{param}.{name}")
    return value


def _call(item: dict[str, Any], param: str, names: ToolNames) -> dict[str, Any]:
    name = _str(item, "name", param)
    if isinstance(item.get("namespace"), str):
        name = item["namespace"] + NAMESPACE_SEPARATOR + name
    arguments = item.get("arguments")
    if isinstance(arguments, dict):
        arguments = orjson.dumps(arguments).decode()
    elif not isinstance(arguments, str):
        raise InvalidRequest("'arguments' must be a JSON string", param=f"{param}.arguments")
    return {"id": _str(item, "call_id", param), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _add_call(messages: list[dict[str, Any]], call: dict[str, Any],
              reasoning: dict[str, Any] | None) -> None:
    """A function call joins the assistant message just before it (the answer's text and
    its calls are one chat message), else starts one; reasoning waiting for an assistant
    message joins that message's."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant":
        last = {"role": "assistant", "content": None}
        messages.append(last)
    last.setdefault("tool_calls", []).append(call)
    if reasoning is not None:
        last["reasoning_state"] = joined(last.get("reasoning_state"), reasoning)


def _call_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for k, part in enumerate(output):
            converted = _part(part, f"{param}.output[{k}]")
            if converted["type"] != "text":
                raise InvalidRequest("function call outputs sent to this model may hold only text",
                                     param=f"{param}.output[{k}]", code="unsupported_parameter")
            texts.append(converted["text"])
        output = "".join(texts)
    elif not isinstance(output, str):
        raise InvalidRequest("'output' must be a string or an array", param=f"{param}.output")
    return {"role": "tool", "tool_call_id": _str(item, "call_id", param), "content": output}


def input_items(raw: Any) -> list[dict[str, Any]]:
    """A request's `input` as a list of items (a string is one user message), the shape
    kept in the store and listed by GET /v1/responses/{id}/input_items."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    if not isinstance(raw, list):
        raise InvalidRequest("'input' must be a string or an array of items", param="input")
    items: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _not_an_item(i)
        items.append(item if "type" in item else {"type": "message", **item})
    return items


def check_input_items(raw: list[Any]) -> None:
    """What input_items refuses in a list, without making the items: for a request whose
    items nothing keeps (not stored, no conversation continued), passed through as sent."""
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _not_an_item(i)


def _not_an_item(i: int) -> InvalidRequest:
    return InvalidRequest("an input item must be an object", param=f"input[{i}]")
