"""A fake Gemini API (generativelanguage v1beta) speaking the real wire format:
`models/{model}:generateContent`, `:streamGenerateContent?alt=sse` (delta chunks with
cumulative usageMetadata, finishReason on the last, no terminator), `:embedContent`,
`:batchEmbedContents`, and Google's error envelope.

Default answers: with a shell-like tool and a user turn asking to run something, a
functionCall running `echo hello`; with tools and a user turn mentioning weather, functionCall parts (two
when it also says "and"; the first carries a thoughtSignature, as thinking models do);
after functionResponse parts, a text quoting them; otherwise "Fake reply to: ...".
With `thinkingConfig.includeThoughts`, the answer opens with a thought summary part
(`thought: true`), as thinking models do; with any `thinkingConfig`, a text answer's last
text part carries a thoughtSignature (TEXT_SIGNATURE; an empty last part when streamed). A request without `x-goog-api-key` gets 400 API_KEY_INVALID, a content with a role other
than `user` or `model` 400 INVALID_ARGUMENT.

    async with make_gemini_fake() as fake:      # fake.url ends in /v1beta
        ...
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes.wire_fake import WireFake, json_response, serve, shell_call, split_text, sse

SIGNATURE = "c2lnbmF0dXJlLTA="
TEXT_SIGNATURE = "dGV4dC1zaWduYXR1cmUrLz0="


def error_body(code: int, status: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, **extra}}


class GeminiFake(WireFake):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{target}", self._model_call)

    async def _model_call(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        scripted = self.next_script(request.path)
        if scripted is not None:
            return await self.send(request, scripted)
        if not recorded.headers.get("x-goog-api-key"):
            return json_response(error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                            details=[{"reason": "API_KEY_INVALID"}]), 400)
        model, _, method = request.match_info["target"].partition(":")
        body = recorded.body if isinstance(recorded.body, dict) else {}
        bad_role = next((i for i, c in enumerate(body.get("contents") or [])
                         if isinstance(c, dict) and c.get("role") not in (None, "user", "model")), None)
        if bad_role is not None:        # the API's rule: system text goes in systemInstruction
            return json_response(error_body(400, "INVALID_ARGUMENT", "Please use a valid role: user, model."), 400)
        if method == "generateContent":
            return json_response(FakeAnswer.for_request(body, model).response())
        if method == "streamGenerateContent" and recorded.query.get("alt") == "sse":
            return await self.stream(request, FakeAnswer.for_request(body, model).events())
        if method == "embedContent":
            return json_response({"embedding": _embedding(body)})
        if method == "batchEmbedContents":
            return json_response({"embeddings": [_embedding(r) for r in body.get("requests") or []]})
        return json_response(error_body(404, "NOT_FOUND", f"method {method} not found"), 404)


THOUGHT = "**Thinking it over**"


class FakeAnswer:
    def __init__(self, model: str, text: str, calls: list[dict[str, Any]], prompt_tokens: int,
                 thoughts: bool = False, signed: bool = False) -> None:
        self.model = model
        self.text = text
        self.calls = calls
        self.prompt_tokens = prompt_tokens
        self.thoughts = [{"text": THOUGHT, "thought": True}] if thoughts else []
        self.signature = {"thoughtSignature": TEXT_SIGNATURE} if signed and text else {}

    @classmethod
    def for_request(cls, body: dict[str, Any], model: str) -> FakeAnswer:
        contents = body.get("contents") or []
        parts = (contents[-1].get("parts") if contents else None) or []
        results = [p["functionResponse"] for p in parts if "functionResponse" in p]
        text = " ".join(str(p["text"]) for p in parts if "text" in p)
        words = sum(len(str(p.get("text", "")).split()) for c in contents for p in c.get("parts") or [])
        calls: list[dict[str, Any]] = []
        if results:
            reply = "Tool said: " + "; ".join(str(r.get("response")) for r in results)
        elif (shell := shell_call([str(d.get("name")) for t in body.get("tools") or []
                                   for d in t.get("functionDeclarations") or []], text)) is not None:
            calls = [{"functionCall": {"name": shell[0], "args": shell[1]}, "thoughtSignature": SIGNATURE}]
            reply = ""
        elif body.get("tools") and "weather" in text.lower():
            name = body["tools"][0]["functionDeclarations"][0]["name"]
            cities = ["Paris", "Rome"] if " and " in text else ["Paris"]
            calls = [{"functionCall": {"name": name, "args": {"city": c}}} for c in cities]
            calls[0]["thoughtSignature"] = SIGNATURE
            reply = ""
        else:
            reply = f"Fake reply to: {text}".strip()
        thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        return cls(model, reply, calls, max(words, 1), thinking.get("includeThoughts") is True, bool(thinking))

    def usage(self, pieces: int) -> dict[str, int]:
        candidates = pieces + 5 * len(self.calls)
        return {"promptTokenCount": self.prompt_tokens, "candidatesTokenCount": candidates,
                "totalTokenCount": self.prompt_tokens + candidates}

    def response(self) -> dict[str, Any]:
        parts = self.thoughts + ([{"text": self.text, **self.signature}] if self.text else []) + self.calls
        return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": self.usage(len(split_text(self.text)) if self.text else 0),
                "modelVersion": self.model, "responseId": "fakeresp1"}

    def events(self) -> list[str]:
        pieces = split_text(self.text) if self.text else []
        chunks: list[dict[str, Any]] = [self._chunk(self.thoughts, 0)] if self.thoughts else []
        for count, piece in enumerate(pieces, start=1):
            chunks.append(self._chunk([{"text": piece}], count))
        chunks.append(self._chunk(self.calls or [{"text": "", **self.signature}], len(pieces)))
        chunks[-1]["candidates"][0]["finishReason"] = "STOP"
        return [sse(chunk) for chunk in chunks]

    def _chunk(self, parts: list[dict[str, Any]], pieces: int) -> dict[str, Any]:
        return {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                "usageMetadata": self.usage(pieces), "modelVersion": self.model, "responseId": "fakestream1"}


def _embedding(request: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(str(p.get("text", "")) for p in (request.get("content") or {}).get("parts") or [])
    size = int(request.get("outputDimensionality") or 8)
    digest = hashlib.sha256(text.encode()).digest()
    return {"values": [round((digest[i % len(digest)] - 128) / 128, 4) for i in range(size)]}


@asynccontextmanager
async def make_gemini_fake() -> AsyncIterator[GeminiFake]:
    async with serve(GeminiFake, "/v1beta") as fake:
        yield fake
