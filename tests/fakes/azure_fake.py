"""A fake Azure OpenAI resource speaking the real wire format: deployment URLs
(`/openai/deployments/{deployment}/...?api-version=...`) and the v1 API (`/openai/v1/...`),
`api-key` auth, the Responses API on the v1 API (`/openai/v1/responses`), OpenAI bodies with Azure's additions (prompt_filter_results,
content_filter_results, a prompt-filter-only first stream chunk with empty choices, a
usage chunk when asked, base64 embeddings when asked), Azure's error envelope (`code` "429", null `type`), and the media
endpoints: audio transcriptions/translations (multipart), speech (binary, in several
writes), image generations; and the free model listing health checks use
(`GET /openai/models?api-version=...`, `GET /openai/v1/models`). A `user` longer than 64
characters or a function description longer than 1024 gets the API's 400, as OpenAI's own.

    async with make_azure_fake() as fake:       # fake.url is the resource endpoint
        ...
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.responses_wire import ResponsesAnswer
from tests.fakes.wire_fake import (
    Recorded,
    WireFake,
    json_response,
    serve,
    shell_call,
    split_text,
    sse,
    without_system,
)

FILTERS = {"hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": FILTERS}]
SPEECH = b"ID3\x04fake-mp3-frame-" * 64


# The API's caps on string fields, with its own wording: `user`, a function's description.
def _too_long(body: dict[str, Any]) -> dict[str, Any] | None:
    fields = [("user", body.get("user"), 64)] + [
        (f"tools[{i}].function.description", (tool.get("function") or {}).get("description"), 1024)
        for i, tool in enumerate(body.get("tools") or []) if isinstance(tool, dict)]
    for param, value, limit in fields:
        if isinstance(value, str) and len(value) > limit:
            return {"error": {"code": "string_above_max_length", "param": param, "type": "invalid_request_error",
                              "message": f"Invalid '{param}': string too long. Expected a string with maximum "
                                         f"length {limit}, but got a string with length {len(value)} instead."}}
    return None


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class AzureFake(WireFake):
    valid_key = "azure-key"         # the only key the model listing accepts

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/deployments/{deployment}/{path:.+}", self._deployment)
        app.router.add_post("/openai/v1/{path:.+}", self._v1)
        app.router.add_get("/openai/models", self._models)
        app.router.add_get("/openai/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        """Models - List: free; the classic route needs api-version, both need the key."""
        recorded = await self.record(request)
        if "/openai/v1/" not in recorded.path and "api-version" not in recorded.query:
            return json_response(error_body("404", "Resource not found"), 404)
        if recorded.headers.get("api-key") != self.valid_key:
            return json_response(error_body("401", "Access denied due to invalid subscription key."), 401)
        return json_response({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "status": "succeeded", "created_at": 1715558400}]})

    async def _deployment(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        if "api-version" not in recorded.query:
            return json_response(error_body("404", "Resource not found"), 404)
        return await self._answer(request, recorded, request.match_info["deployment"], request.match_info["path"])

    async def _v1(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        model = recorded.body.get("model", "") if isinstance(recorded.body, dict) else ""
        return await self._answer(request, recorded, str(model), request.match_info["path"])

    async def _answer(self, request: web.Request, recorded: Recorded, deployment: str,
                      path: str) -> web.StreamResponse:
        scripted = self.next_script(request.path)
        if scripted is not None:
            return await self.send(request, scripted)
        bearer = recorded.headers.get("authorization", "").startswith("Bearer ") and "/openai/v1/" in recorded.path
        if not recorded.headers.get("api-key") and not bearer:    # v1 also takes the key as a bearer token
            return json_response(error_body("401", "Access denied due to invalid subscription key."), 401)
        body = recorded.body if isinstance(recorded.body, dict) else {}
        too_long = _too_long(body)
        if too_long is not None:
            return json_response(too_long, 400)
        if path == "chat/completions":
            answer = ChatAnswer.for_request(body, deployment)
            if body.get("stream"):
                return await self.stream(request, answer.events(body))
            return json_response(answer.response())
        if path == "responses" and "/openai/v1/" in recorded.path:    # v1 API only, as Azure
            answer = ResponsesAnswer(deployment, body)
            if body.get("stream"):
                return await self.stream(request, answer.events())
            return json_response(answer.response())
        if path == "embeddings":
            inputs = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
            data = [{"object": "embedding", "index": i, "embedding": _embedding(text, body.get("encoding_format"))}
                    for i, text in enumerate(inputs)]
            return json_response({"object": "list", "model": "text-embedding-3-small", "data": data,
                                  "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
        if path in ("audio/transcriptions", "audio/translations"):
            return _transcription(recorded)
        if path == "audio/speech":
            return await self._speech(request)
        if path == "images/generations":
            return json_response({"created": 1727000000, "data": [{"b64_json": "ZmFrZS1pbWFnZQ==",
                                  "revised_prompt": body.get("prompt")}]})
        return json_response(error_body("404", "Resource not found"), 404)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        for start in range(0, len(SPEECH), 256):
            await response.write(SPEECH[start:start + 256])
        await response.write_eof()
        return response


def _embedding(text: Any, encoding_format: Any) -> Any:
    """Floats, or little-endian float32 in base64 when asked (as current api-versions do)."""
    vector = [0.5, -0.5, float(len(str(text)))]
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def multipart_fields(recorded: Recorded) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body."""
    header = f"Content-Type: {recorded.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + recorded.raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _transcription(recorded: Recorded) -> web.Response:
    fields = multipart_fields(recorded)
    filename, audio = fields.get("file", (None, b""))
    text = f"fake transcript of {filename} ({len(audio)} bytes)"
    if fields.get("response_format", (None, b""))[1] == b"text":
        return web.Response(text=text, content_type="text/plain")
    return json_response({"text": text})


class ChatAnswer:
    def __init__(self, deployment: str, text: str, calls: list[dict[str, Any]], prompt_tokens: int) -> None:
        self.deployment = deployment
        self.text = text
        self.calls = calls
        self.prompt_tokens = prompt_tokens

    @classmethod
    def for_request(cls, body: dict[str, Any], deployment: str) -> ChatAnswer:
        messages = body.get("messages") or []
        turns = without_system(messages)
        last = turns[-1] if turns else {}
        content = last.get("content")
        text = content if isinstance(content, str) else " ".join(
            str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
        calls: list[dict[str, Any]] = []
        if last.get("role") == "tool":
            reply = f"Tool said: {text}"
        elif (shell := shell_call([str((t.get("function") or {}).get("name")) for t in body.get("tools") or []],
                                  text)) is not None:
            calls = [{"id": "call_azshell", "type": "function",
                      "function": {"name": shell[0], "arguments": orjson.dumps(shell[1]).decode()}}]
            reply = ""
        elif body.get("tools") and "weather" in text.lower():
            cities = ["Paris", "Rome"] if " and " in text else ["Paris"]
            name = body["tools"][0]["function"]["name"]
            calls = [{"id": f"call_az{i}", "type": "function",
                      "function": {"name": name, "arguments": f'{{"city": "{c}"}}'}} for i, c in enumerate(cities)]
            reply = ""
        else:
            reply = f"Fake reply to: {text}".strip()
        words = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        return cls(deployment, reply, calls, max(words, 1))

    def usage(self) -> dict[str, Any]:
        completion = len(split_text(self.text)) + 5 * len(self.calls)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": 0}}

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = self.calls
        choice = {"index": 0, "finish_reason": "tool_calls" if self.calls else "stop", "logprobs": None,
                  "message": message, "content_filter_results": FILTERS}
        return {"id": "chatcmpl-azfake", "object": "chat.completion", "created": 1727000000,
                "model": "gpt-4o-2024-08-06", "prompt_filter_results": PROMPT_FILTERS,
                "choices": [choice], "usage": self.usage()}

    def events(self, body: dict[str, Any]) -> list[str]:
        events = [sse({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                       "prompt_filter_results": PROMPT_FILTERS})]
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in (split_text(self.text) if self.text else [])]
        for index, call in enumerate(self.calls):
            deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"], "arguments": ""}}]})
            arguments = call["function"]["arguments"]
            deltas += [{"tool_calls": [{"index": index, "function": {"arguments": part}}]}
                       for part in (arguments[:6], arguments[6:])]
        events += [self._chunk(delta, None) for delta in deltas]
        events.append(self._chunk({}, "tool_calls" if self.calls else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(sse({"id": "chatcmpl-azfake", "object": "chat.completion.chunk", "created": 1727000000,
                               "model": "gpt-4o-2024-08-06", "choices": [], "usage": self.usage()}))
        return [*events, "data: [DONE]\n\n"]

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> str:
        return sse({"id": "chatcmpl-azfake", "object": "chat.completion.chunk", "created": 1727000000,
                    "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                               "logprobs": None, "content_filter_results": FILTERS}]})


@asynccontextmanager
async def make_azure_fake() -> AsyncIterator[AzureFake]:
    async with serve(AzureFake) as fake:
        yield fake
