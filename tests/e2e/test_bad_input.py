"""Every bad input gets the OpenAI error shape with the right status and type, and the
server stays healthy after. Table-driven over raw HTTP, as a misbehaving client sends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

from tests.fakes.openai_fake import OpenAIFake, Scripted
from tests.harness import ADMIN_KEY, CLIENT_KEY, Gateway, make_config, make_gateway
from truckllm.config.loader import load_bytes
from truckllm.runtime.state import build_state
from truckllm.server.keys import STATE

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Case:
    name: str
    status: int
    type: str
    method: str = "POST"
    path: str = "/v1/chat/completions"
    body: Any = None                      # dict -> JSON; bytes -> sent as is
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    code: str | None = None
    param: str | None = None


CASES = [
    Case("unknown path", 404, "not_found_error", path="/v1/nothing-here", body=CHAT),
    Case("unknown path GET", 404, "not_found_error", method="GET", path="/favicon.ico"),
    Case("wrong method", 405, "invalid_request_error", method="GET"),
    Case("wrong method on models", 405, "invalid_request_error", path="/v1/models", body=CHAT),
    Case("malformed JSON", 400, "invalid_request_error", body=b'{"model": "demo", "messages": ['),
    Case("empty body", 400, "invalid_request_error", body=b""),
    Case("JSON but not an object", 400, "invalid_request_error", body=b"[1, 2]"),
    Case("missing model", 400, "invalid_request_error", body={"messages": CHAT["messages"]}, param="model"),
    Case("model not a string", 400, "invalid_request_error", body={**CHAT, "model": 5}, param="model"),
    Case("messages not a list", 400, "invalid_request_error", body={**CHAT, "messages": "hi"}, param="messages"),
    Case("messages empty", 400, "invalid_request_error", body={**CHAT, "messages": []}, param="messages"),
    Case("message without role", 400, "invalid_request_error", body={**CHAT, "messages": [{"content": "x"}]}, param="messages[0]"),
    Case("a later message not an object", 400, "invalid_request_error",
         body={**CHAT, "messages": [*CHAT["messages"], *CHAT["messages"], ["user"]]}, param="messages[2]"),
    Case("a later message with a number for role", 400, "invalid_request_error",
         body={**CHAT, "messages": [*CHAT["messages"], {"role": 1, "content": "hi"}]}, param="messages[1]"),
    Case("stream not a boolean", 400, "invalid_request_error", body={**CHAT, "stream": "yes"}, param="stream"),
    Case("n is a boolean", 400, "invalid_request_error", body={**CHAT, "n": True}, param="n"),
    Case("temperature a string", 400, "invalid_request_error", body={**CHAT, "temperature": "hot"}, param="temperature"),
    Case("embeddings bad encoding", 400, "invalid_request_error", path="/v1/embeddings",
         body={"model": "demo", "input": "x", "encoding_format": "hex"}, param="encoding_format"),
    Case("n zero", 400, "invalid_request_error", body={**CHAT, "n": 0}, param="n"),
    Case("n over 128", 400, "invalid_request_error", body={**CHAT, "n": 100000}, param="n"),
    Case("max_tokens negative", 400, "invalid_request_error", body={**CHAT, "max_tokens": -5}, param="max_tokens"),
    Case("embeddings dimensions zero", 400, "invalid_request_error", path="/v1/embeddings",
         body={"model": "demo", "input": "x", "dimensions": 0}, param="dimensions"),
    Case("embeddings dimensions the mock cannot make", 400, "invalid_request_error", path="/v1/embeddings",
         body={"model": "demo", "input": "x", "dimensions": 100_000_000}, param="dimensions"),
    Case("embeddings empty input list", 400, "invalid_request_error", path="/v1/embeddings",
         body={"model": "demo", "input": []}, param="input"),
    Case("embeddings empty input string", 400, "invalid_request_error", path="/v1/embeddings",
         body={"model": "demo", "input": ""}, param="input"),
    Case("embeddings missing input", 400, "invalid_request_error", path="/v1/embeddings", body={"model": "demo"}, param="input"),
    Case("completions prompt wrong type", 400, "invalid_request_error", path="/v1/completions",
         body={"model": "demo", "prompt": {"a": 1}}, param="prompt"),
    Case("body over max_body_mb", 413, "invalid_request_error", body={**CHAT, "pad": "x" * 1_200_000}),
    Case("no key", 401, "authentication_error", body=CHAT, headers={}, code="invalid_api_key"),
    Case("wrong key", 401, "authentication_error", body=CHAT, headers={"Authorization": "Bearer tk-wrong"}, code="invalid_api_key"),
    Case("not a bearer", 401, "authentication_error", body=CHAT, headers={"Authorization": f"Basic {CLIENT_KEY}"}),
    Case("expired key", 403, "permission_error", body=CHAT, headers={"Authorization": "Bearer tk-expired"}, code="key_expired"),
    Case("model not allowed", 403, "permission_error", body={**CHAT, "model": "gpt"},
         headers={"Authorization": "Bearer tk-demo-only"}, code="model_not_allowed", param="model"),
    Case("unknown model", 404, "not_found_error", body={**CHAT, "model": "gpt-17"}, code="model_not_found", param="model"),
    Case("models without key", 401, "authentication_error", method="GET", path="/v1/models", headers={}),
    # deeper than the recursive walks downstream survive (the estimate, orjson.dumps at 255)
    Case("tools nested 300 deep", 400, "invalid_request_error",
         body=b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "tools": '
              + b"[" * 300 + b"]" * 300 + b"}"),
    Case("content nested 1000 deep", 400, "invalid_request_error",
         body=b'{"model": "demo", "messages": [{"role": "user", "content": [{"type": "text", "x": '
              + b"[" * 1000 + b"]" * 1000 + b"}]}]}"),
]


@pytest.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[Gateway]:
    config = make_config(openai_fake.url, server={"max_body_mb": 1, "log_level": "warning"})
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    config["keys"] += [{"id": "old", "key": "tk-expired", "expires": yesterday},
                       {"id": "demo-only", "key": "tk-demo-only", "models": ["demo"]}]
    async with make_gateway(config) as running:
        yield running


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_bad_input_gets_an_openai_error(gateway: Gateway, case: Case) -> None:
    data = case.body if isinstance(case.body, bytes) else (orjson.dumps(case.body) if case.body is not None else None)
    async with gateway.http() as http:
        response = await http.request(case.method, case.path, data=data,
                                      headers={**case.headers, "Content-Type": "application/json"})
        assert response.status == case.status
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["x-request-id"]
        error = orjson.loads(await response.read())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == case.type
        assert error["message"] and "Traceback" not in error["message"]
        if case.code:
            assert error["code"] == case.code
        if case.param:
            assert error["param"] == case.param
        assert CLIENT_KEY not in error["message"]
        health = await http.get("/health")
        assert health.status == 200 and await health.json() == {"status": "ok"}



async def test_a_request_line_no_route_can_match_gets_an_openai_error(gateway: Gateway) -> None:
    """`OPTIONS *` has no path for a route to match at all; it is still answered in the
    OpenAI shape, not with aiohttp's plain-text 404."""
    host, port = gateway.root.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 404 ")
    assert b"Content-Type: application/json" in head
    assert orjson.loads(body)["error"]["code"] == "unknown_url"

UPSTREAM_CASES = [
    # (scripted upstream answer, client status, client error type, code)
    (Scripted(status=400, body={"error": {"message": "This model's maximum context length is 8192 tokens",
                                          "type": "invalid_request_error", "param": "messages",
                                          "code": "context_length_exceeded"}}),
     400, "invalid_request_error", "context_length_exceeded"),
    (Scripted(status=404), 404, "invalid_request_error", "model_not_found"),
    (Scripted(status=500), 502, "upstream_error", None),
    (Scripted(status=503, raw=b"<html>bad gateway</html>", content_type="text/html"), 503, "overloaded_error", "overloaded"),
    (Scripted(drop=True), 502, "upstream_error", None),
    (Scripted(raw=b"not json at all", content_type="text/plain"), 502, "upstream_error", None),
]


@pytest.mark.parametrize(("scripted", "status", "type_", "code"), UPSTREAM_CASES,
                         ids=["context length passthrough", "upstream 404", "upstream 500",
                              "upstream html 503", "dropped connection", "non-JSON 200"])
async def test_upstream_failures_are_reshaped(gateway: Gateway, openai_fake: OpenAIFake,
                                              scripted: Scripted, status: int, type_: str, code: str | None) -> None:
    openai_fake.script(*[scripted] * 3)     # retryable failures are retried (routing.max_attempts)
    async with gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "model": "gpt"}, headers=AUTH)
        assert response.status == status
        error = orjson.loads(await response.read())["error"]
        assert error["type"] == type_
        assert error["code"] == code
        assert "sk-upstream-secret-1" not in error["message"]
        assert (await http.get("/health")).status == 200


async def test_unreachable_upstream_is_a_502() -> None:
    config = make_config("http://127.0.0.1:9/v1")           # discard port: connection refused
    async with make_gateway(config) as gateway, gateway.http() as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "model": "gpt"}, headers=AUTH)
        assert response.status == 502
        assert (await response.json())["error"]["type"] == "upstream_error"


async def test_a_key_dropped_by_a_reload_is_refused_at_once() -> None:
    """Verified keys are remembered per config snapshot (auth skips the digest for them):
    the next snapshot must not inherit that memory."""
    other = "tk-test-client-key-0002"
    config = make_config(keys=[{"id": "team", "key": CLIENT_KEY}, {"id": "other", "key": other}])
    async with make_gateway(config) as gateway:
        for key in (CLIENT_KEY, other, CLIENT_KEY):
            answer = await gateway.client(key).chat.completions.create(**CHAT)
            assert answer.choices[0].message.content
        reloaded = make_config(keys=[{"id": "other", "key": other}])
        holder = gateway.app[STATE]
        holder.swap(build_state(load_bytes(yaml.safe_dump(reloaded).encode(), "test.yaml", {}), 2))
        with pytest.raises(openai.AuthenticationError):
            await gateway.client(CLIENT_KEY).chat.completions.create(**CHAT)
        assert (await gateway.client(other).chat.completions.create(**CHAT)).choices


async def test_a_config_file_with_a_character_yaml_forbids_is_refused_with_its_position(
        tmp_path: Path) -> None:
    """A control character in the file: the reload is refused with where it is, in the
    admin API's error shape; the running config keeps serving."""
    config = make_config(server={"log_level": "warning", "admin_api_key": ADMIN_KEY})
    async with make_gateway(config, directory=tmp_path) as gateway:
        path = tmp_path / "config.yaml"
        text = path.read_text()
        path.write_text(text + 'note: "a\x07b"\n')
        status, body = await gateway.admin("POST", "/admin/v1/reload")
        assert status == 400 and body["error"]["code"] == "invalid_config", body
        line = text.count("\n") + 1
        assert body["errors"] == [{
            "path": "", "location": f"{path}:{line}:9",
            "message": "YAML syntax error: character #x0007: special characters are not allowed"}]
        assert (await gateway.client().chat.completions.create(**CHAT)).choices
