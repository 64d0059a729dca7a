"""Google Gemini (generateContent, embedContent) <-> OpenAI chat completions and embeddings.

Pure translation, no I/O; must not import transport, dispatch or server modules.
Operations: chat, completions (answered through chat), embeddings.

Gemini gives function calls no stable id and may attach an opaque `thoughtSignature` that
must come back unchanged on the next turn. OpenAI clients only echo tool-call ids, so the
signature travels inside the id we invent (`call_<response>_<k>__ts_<signature>`) and is
restored when the id comes back in an assistant `tool_calls` entry. A text part's signature
has no id to ride in: for dialects that carry reasoning (CallContext.carry_reasoning) it is
the answer's `reasoning_state` (providers.shared.reasoning), and goes back on the text of
the assistant message that carries that state.
"""

from __future__ import annotations

import functools
import mimetypes
import urllib.parse
from types import MappingProxyType
from typing import Any

import orjson

from truckllm.errors import InvalidRequest, UpstreamFailed
from truckllm.providers.base import (
    CallContext,
    Operation,
    OperationSpec,
    ParsedResponse,
    ProviderSpec,
    SSEEvent,
    Target,
    UpstreamErrorInfo,
    UpstreamKey,
    UpstreamRequest,
)
from truckllm.providers.shared.chat_request import (
    ChatRequest,
    Media,
    Reasoning,
    Text,
    ToolChoice,
    ToolResult,
    ToolUse,
    Turn,
    chat_body_from_completions,
    read_chat_request,
    refuse,
    uses_legacy_functions,
)
from truckllm.providers.shared.chat_shapes import (
    ChoiceOut,
    ChunkStream,
    ToolCallOut,
    build_embeddings,
    build_response,
    estimate_tokens,
    kind_of,
)
from truckllm.providers.shared.model_ids import path_segment
from truckllm.providers.shared.reasoning import reasoning_state, state_blocks, thinking_budget
from truckllm.providers.shared.upstream_errors import (
    context_overflow_code,
    decode_json,
    error_object,
    error_type_for_status,
    fallback_message,
    to_gateway_error,
)
from truckllm.usage import Usage

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
SIGNATURE_MARK = "__ts_"

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# Google's canonical status names -> HTTP, for an error event without a usable `code`.
_HTTP_BY_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "PERMISSION_DENIED": 403,
                   "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500, "UNAVAILABLE": 503,
                   "DEADLINE_EXCEEDED": 504}
_STATUS_CODES = {"FAILED_PRECONDITION": "failed_precondition", "NOT_FOUND": "model_not_found",
                 "RESOURCE_EXHAUSTED": "rate_limit_exceeded", "UNAVAILABLE": "overloaded",
                 "DEADLINE_EXCEEDED": "timeout"}


# ---- request ------------------------------------------------------------------------------


def build_request(operation: Operation, body: dict[str, Any], target: Target, key: UpstreamKey,
                  ctx: CallContext) -> UpstreamRequest:
    model_url = f"{target.base_url}/models/{path_segment(target.model)}"
    if operation == "embeddings":
        url, payload = _embeddings_request(body, target, model_url)
        stream = False
    elif operation in ("chat", "completions"):
        chat_body = chat_body_from_completions(body) if operation == "completions" else body
        payload = to_generate_request(read_chat_request(chat_body), include_thoughts=ctx.reasoning_summaries)
        stream = ctx.stream
        url = f"{model_url}:streamGenerateContent?alt=sse" if stream else f"{model_url}:generateContent"
    else:
        raise InvalidRequest(f"provider type 'gemini' cannot serve {operation}", code="unsupported_operation")
    headers = {"content-type": "application/json", **target.headers, "x-goog-api-key": key.value}
    return UpstreamRequest("POST", url, headers, orjson.dumps(payload), stream)


def to_generate_request(request: ChatRequest, include_thoughts: bool = False) -> dict[str, Any]:
    """The generateContent body; `include_thoughts` asks for thought summaries along with a
    thinking budget (for clients that are shown reasoning)."""
    if request.logprobs:
        raise refuse("gemini", "logprobs", "logprobs")
    if request.audio_output:
        raise refuse("gemini", "audio output", "modalities")
    payload: dict[str, Any] = {}
    if request.system:
        payload["systemInstruction"] = {"parts": [{"text": text} for text in request.system]}
    payload["contents"] = [_content(turn) for turn in request.turns]
    if request.tools:
        payload["tools"] = [{"functionDeclarations": [
            {"name": tool.name,
             **({"description": tool.description} if tool.description else {}),
             **({"parametersJsonSchema": tool.parameters} if tool.parameters else {})}
            for tool in request.tools
        ]}]
    if request.tool_choice is not None and request.tools:
        payload["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
    config = _generation_config(request)
    if include_thoughts and "thinkingConfig" in config:
        config["thinkingConfig"]["includeThoughts"] = True
    if config:
        payload["generationConfig"] = config
    return payload


def _content(turn: Turn) -> dict[str, Any]:
    parts = [_part(block) for block in turn.blocks if not isinstance(block, Reasoning)]
    signature = next((b["thoughtSignature"] for block in reversed(turn.blocks) if isinstance(block, Reasoning)
                      for b in reversed(state_blocks(block.state, "gemini"))
                      if isinstance(b.get("thoughtSignature"), str)), None)
    text = next((part for part in reversed(parts) if "text" in part), None)
    if signature is not None and text is not None:
        text["thoughtSignature"] = signature     # back on the text it came with
    return {"role": "model" if turn.role == "assistant" else "user", "parts": parts}


def text_signature(signature: str) -> dict[str, Any]:
    """The `reasoning_state` of an answer whose text part carried a thought signature."""
    return reasoning_state("gemini", [{"type": "text", "thoughtSignature": signature}])


def _part(block: Text | Media | ToolUse | ToolResult) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"text": block.text}
    if isinstance(block, ToolUse):
        part: dict[str, Any] = {"functionCall": {"name": block.name, "args": block.arguments}}
        _, _, signature = block.id.partition(SIGNATURE_MARK)
        if signature:
            part["thoughtSignature"] = signature
        return part
    if isinstance(block, ToolResult):
        if not block.name:
            raise InvalidRequest(f"tool result {block.tool_call_id!r} answers no earlier tool call",
                                 param="messages")
        parsed = _json_object(block.content)
        return {"functionResponse": {"name": block.name,
                                     "response": parsed if parsed is not None else {"output": block.content}}}
    if block.url is not None:
        return {"fileData": {"mimeType": url_mime_type(block.url), "fileUri": block.url}}
    return {"inlineData": {"mimeType": block.mime, "data": block.data}}


def url_mime_type(url: str) -> str:
    """The MIME type an image URL's path names (the query of a signed URL ignored);
    image/jpeg when it names none, since Gemini requires one for an external URL."""
    path = urllib.parse.urlsplit(url).path
    guessed = mimetypes.guess_type(path.lower())[0]
    return guessed if guessed and guessed.startswith("image/") else "image/jpeg"


def _json_object(text: str) -> dict[str, Any] | None:
    parsed = decode_json(text.encode())
    return parsed if isinstance(parsed, dict) else None


def _calling_config(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, value in (("temperature", request.temperature), ("topP", request.top_p),
                        ("maxOutputTokens", request.max_tokens), ("seed", request.seed),
                        ("presencePenalty", request.presence_penalty),
                        ("frequencyPenalty", request.frequency_penalty)):
        if value is not None:
            config[name] = value
    if request.stop:
        config["stopSequences"] = request.stop
    if request.n > 1:
        config["candidateCount"] = request.n
    budget = thinking_budget(request.reasoning_effort)
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget}
    if request.response_format is not None:
        config["responseMimeType"] = "application/json"
        if request.response_format["type"] == "json_schema":
            config["responseJsonSchema"] = request.response_format["json_schema"]["schema"]
    return config


def _embeddings_request(body: dict[str, Any], target: Target, model_url: str) -> tuple[str, dict[str, Any]]:
    texts = embedding_inputs(body)
    extra: dict[str, Any] = {}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
        extra["outputDimensionality"] = dimensions
    if isinstance(body.get("input"), str):
        return f"{model_url}:embedContent", {"content": {"parts": [{"text": texts[0]}]}, **extra}
    requests = [{"model": f"models/{target.model}", "content": {"parts": [{"text": text}]}, **extra}
                for text in texts]
    return f"{model_url}:batchEmbedContents", {"requests": requests}


def embedding_inputs(body: Any) -> list[str]:
    raw = body.get("input") if isinstance(body, dict) else None
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("'input' must be a string or a non-empty array of strings for this provider "
                             "(token arrays cannot be translated)", param="input")
    return texts


# ---- response -----------------------------------------------------------------------------


def parse_response(operation: Operation, raw: bytes, target: Target, ctx: CallContext) -> ParsedResponse:
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise UpstreamFailed("upstream answered with a body that is not JSON")
    if operation == "embeddings":
        return _parse_embeddings(data, ctx)
    usage = usage_from(data.get("usageMetadata"))
    response_id = str(data.get("responseId") or "") or None
    choices = []
    for position, candidate in enumerate(data.get("candidates") or []):
        index = candidate.get("index", position) if isinstance(candidate, dict) else position
        text, calls, thoughts, signature = _candidate_output(candidate, response_id or ctx.request_id)
        finish = FINISH_REASONS.get(str(candidate.get("finishReason")), "stop")
        choices.append(ChoiceOut(index, text, calls, "tool_calls" if calls and finish == "stop" else finish,
                                 reasoning=thoughts,
                                 reasoning_state=text_signature(signature) if signature else None))
    if not choices:     # the prompt itself was blocked: HTTP 200 with no candidates
        choices = [ChoiceOut(finish_reason="content_filter")]
    legacy = uses_legacy_functions(ctx.client_body)
    return ParsedResponse(build_response(kind_of(operation), ctx, response_id, choices, usage, legacy), usage)


def _candidate_output(candidate: Any, response_id: str) -> tuple[str, list[ToolCallOut], str, str]:
    """The answer's text, its calls, its thought summaries (parts marked `thought`), and the
    last thought signature of a text part ("" for none)."""
    parts = ((candidate.get("content") or {}).get("parts") or []) if isinstance(candidate, dict) else []
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCallOut] = []
    signature = ""
    for part in parts:
        if isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
            signature = _signature(part) or signature
        elif isinstance(part.get("functionCall"), dict):
            calls.append(_tool_call(part, response_id, len(calls)))
    return "".join(texts), calls, "".join(thoughts), signature


def _signature(part: dict[str, Any]) -> str:
    signature = part.get("thoughtSignature")
    return signature if isinstance(signature, str) else ""


def _tool_call(part: dict[str, Any], response_id: str, k: int) -> ToolCallOut:
    call = part["functionCall"]
    call_id = str(call.get("id") or f"call_{response_id}_{k}")
    if isinstance(part.get("thoughtSignature"), str):
        call_id += SIGNATURE_MARK + part["thoughtSignature"]
    arguments = orjson.dumps(call.get("args") or {}).decode()
    return ToolCallOut(call_id, str(call.get("name")), arguments)


def usage_from(raw: Any) -> Usage:
    meta = raw if isinstance(raw, dict) else {}

    def count(name: str) -> int:
        value = meta.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return Usage(
        prompt_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
        completion_tokens=count("candidatesTokenCount") + count("thoughtsTokenCount"),
        cache_read_tokens=count("cachedContentTokenCount"),
    )


def _parse_embeddings(data: dict[str, Any], ctx: CallContext) -> ParsedResponse:
    items = data.get("embeddings") if "embeddings" in data else [data.get("embedding")]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UpstreamFailed("upstream answered with an embeddings body of an unknown shape")
    vectors = [list(item.get("values") or []) for item in items]
    # Gemini reports no token usage for embeddings: estimate it so limits and spend count.
    usage = Usage(prompt_tokens=sum(estimate_tokens(t) for t in embedding_inputs(ctx.client_body)))
    return ParsedResponse(build_embeddings(ctx, vectors, usage), usage)


# ---- stream -------------------------------------------------------------------------------


class GeminiStreamTranslator:
    """Gemini SSE chunks (each a GenerateContentResponse delta) -> OpenAI chunks."""

    def __init__(self, operation: Operation, ctx: CallContext) -> None:
        self._kind = kind_of(operation)
        self._ctx = ctx
        self._legacy = uses_legacy_functions(ctx.client_body)
        self._choices: dict[int, ChunkStream] = {}
        self._response_id: str | None = None
        self._signatures: dict[int, str] = {}      # choice -> its text parts' last thought signature
        self.usage: Usage | None = None

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        data = decode_json(event.data)
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("error"), dict):
            code = data["error"].get("code")
            status = (code if isinstance(code, int) and not isinstance(code, bool) and code >= 400
                      else _HTTP_BY_STATUS.get(str(data["error"].get("status")), 502))
            raise to_gateway_error(_info(status, data["error"]))
        if data.get("usageMetadata"):
            self.usage = usage_from(data["usageMetadata"])     # cumulative: keep the last
        self._response_id = self._response_id or (str(data.get("responseId") or "") or None)
        candidates = data.get("candidates") or []
        out: list[SSEEvent] = []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            return self._choice(0).finish("content_filter")
        for position, candidate in enumerate(candidates):
            if isinstance(candidate, dict):
                out += self._candidate(candidate, candidate.get("index", position))
        return out

    def close(self) -> list[SSEEvent]:
        if not any(choice.finished for choice in self._choices.values()):
            raise UpstreamFailed("upstream stream ended without a finishReason")
        out: list[SSEEvent] = []
        for choice in self._choices.values():
            out += choice.finish("stop")
        return out + self._choice(0).usage(self.usage)

    def _choice(self, index: int) -> ChunkStream:
        if index not in self._choices:
            choice = ChunkStream(self._kind, self._ctx, self._legacy, index)
            choice.set_upstream_id(self._response_id)
            self._choices[index] = choice
        return self._choices[index]

    def _candidate(self, candidate: dict[str, Any], index: int) -> list[SSEEvent]:
        choice = self._choice(index)
        out: list[SSEEvent] = []          # the role chunk comes with the first content
        for part in (candidate.get("content") or {}).get("parts") or []:
            if isinstance(part.get("text"), str):
                out += choice.reasoning(part["text"]) if part.get("thought") else choice.text(part["text"])
                if _signature(part):
                    self._signatures[index] = _signature(part)
            elif isinstance(part.get("functionCall"), dict):
                call = _tool_call(part, self._response_id or self._ctx.request_id, choice.tool_count)
                out += choice.tool_start(call.id, call.name, call.arguments)[1]
        if candidate.get("finishReason"):
            # A text part's signature is sent once the text is whole (it may come on the
            # last, even empty, text part).
            if index in self._signatures:
                out += choice.reasoning_state(text_signature(self._signatures.pop(index)))
            out += choice.finish(FINISH_REASONS.get(str(candidate["finishReason"]), "stop"))
        return out


def new_stream_translator(operation: Operation, target: Target, ctx: CallContext) -> GeminiStreamTranslator:
    return GeminiStreamTranslator(operation, ctx)


# ---- errors -------------------------------------------------------------------------------


def parse_error(status: int, body: bytes) -> UpstreamErrorInfo:
    error = error_object(body)
    if error is None:
        return UpstreamErrorInfo(status, error_type_for_status(status), fallback_message(status, body))
    return _info(status, error)


def _info(status: int, error: dict[str, Any]) -> UpstreamErrorInfo:
    message = str(error.get("message") or "upstream error")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    if any(d.get("reason") == "API_KEY_INVALID" for d in details):
        return UpstreamErrorInfo(401, "authentication_error", message, code="invalid_api_key")
    code = _STATUS_CODES.get(str(error.get("status"))) or context_overflow_code(message)
    return UpstreamErrorInfo(status, error_type_for_status(status), message, code=code,
                             retry_after_s=_retry_delay(details))


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


def build_probe(target: Target, key: str) -> UpstreamRequest:
    """`GET /models`: free, and answers 400/403 for a bad key (routing's health checks)."""
    headers = {**target.headers, "x-goog-api-key": key}
    return UpstreamRequest("GET", f"{target.base_url}/models", headers, None, False)


def operation(op: Operation) -> OperationSpec:
    streams = op is not Operation.EMBEDDINGS
    return OperationSpec(functools.partial(build_request, op), functools.partial(parse_response, op),
                         functools.partial(new_stream_translator, op) if streams else None)


SPEC = ProviderSpec(
    type="gemini",
    default_base_url=DEFAULT_BASE_URL,
    operations=MappingProxyType({op: operation(op) for op in
                                 (Operation.CHAT, Operation.COMPLETIONS, Operation.EMBEDDINGS)}),
    parse_error=parse_error,
    build_probe=build_probe,
)
