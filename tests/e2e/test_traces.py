"""Traces of a running `truckllm serve` (`server.otel`), received by a small OTLP/HTTP
collector and decoded with opentelemetry-proto: a SERVER span per request continuing the
client's traceparent, a CLIENT span per upstream attempt with the GenAI attributes, the
attempt's context passed upstream, and no prompt text or secret in any span. Off, the
OpenTelemetry SDK is not even imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.harness import (
    REPO_ROOT,
    SECRETS,
    SERVE_ENV,
    free_port,
    run_serve_process,
    serve_config,
    wait_until,
)

pytestmark = pytest.mark.slow     # mostly waits: runs first (tests/conftest.py)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PROMPT = "the secret plans for the tunnel under the river"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}     # the SDK's batch delay, in ms


@dataclass
class Collector:
    url: str
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)


def attributes(span: Span) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in span.attributes}


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector("")

    async def traces(request: web.Request) -> web.Response:
        raw = await request.read()
        found.raw.append(raw)
        export = ExportTraceServiceRequest.FromString(raw)
        for resource_spans in export.resource_spans:
            found.resources.append({kv.key: value_of(kv.value)
                                    for kv in resource_spans.resource.attributes})
            for scope_spans in resource_spans.scope_spans:
                found.spans.extend(scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = f"http://127.0.0.1:{server.port}"
    try:
        yield found
    finally:
        await server.close()


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running


async def test_a_request_and_its_attempts_are_traced(tmp_path: Path, collector: Collector,
                                                     fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    otel = f"otel: {{endpoint: '{collector.url}', service_name: truckllm-test}}"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url, extra_server=otel))
    async with run_serve_process(path, port, env=FAST_EXPORT) as gateway:
        fake.script(Scripted(status=500))           # the first attempt fails, the second answers
        client = gateway.openai_client(SERVE_ENV["TEAM_KEY"])
        answer = await client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        assert answer.choices[0].message.content

        await wait_until(lambda: _count(collector, 3), "three spans at the collector")
        server = [s for s in collector.spans if s.kind == Span.SPAN_KIND_SERVER]
        attempts = sorted((s for s in collector.spans if s.kind == Span.SPAN_KIND_CLIENT),
                          key=lambda s: attributes(s)["truckllm.attempt"])
        assert len(server) == 1 and len(attempts) == 2
        request = server[0]

        # The client's trace is continued; the attempts are children of the request.
        assert request.trace_id.hex() == CLIENT_TRACE
        assert request.parent_span_id.hex() == CLIENT_SPAN
        for attempt in attempts:
            assert attempt.trace_id == request.trace_id
            assert attempt.parent_span_id == request.span_id
            assert request.start_time_unix_nano <= attempt.start_time_unix_nano
            assert attempt.end_time_unix_nano <= request.end_time_unix_nano

        # GenAI attributes of the request.
        assert request.name == "chat gpt"
        tags = attributes(request)
        assert tags["gen_ai.operation.name"] == "chat"
        assert tags["gen_ai.request.model"] == "gpt"
        assert tags["gen_ai.response.model"] == "gpt-4o-mini"
        assert tags["gen_ai.usage.input_tokens"] > 0 and tags["gen_ai.usage.output_tokens"] > 0
        assert tags["truckllm.key"] == "team-a" and tags["truckllm.alias"] == "gpt"
        assert tags["truckllm.attempts"] == 2
        assert tags["http.response.status_code"] == 200
        assert request.status.code != Status.STATUS_CODE_ERROR

        # ... and of each attempt: the failed one says why.
        first, second = map(attributes, attempts)
        assert first["truckllm.attempt"] == 1 and second["truckllm.attempt"] == 2
        for tags in (first, second):
            assert tags["gen_ai.operation.name"] == "chat"
            assert tags["gen_ai.provider.name"] == "openai"
            assert tags["gen_ai.request.model"] == "gpt-4o-mini"
            assert tags["truckllm.provider"] == "openai"
        assert first["error.type"] == "500"
        assert attempts[0].status.code == Status.STATUS_CODE_ERROR
        assert "error.type" not in second
        assert second["gen_ai.usage.output_tokens"] > 0
        assert attempts[0].name == "chat gpt-4o-mini"

        # Each attempt's own context went upstream with it.
        sent = [r.headers.get("traceparent") for r in fake.requests
                if r.path == "/v1/chat/completions"]
        assert sent == [f"00-{CLIENT_TRACE}-{a.span_id.hex()}-01" for a in attempts]

        assert collector.resources[0]["service.name"] == "truckllm-test"
        everything = b"".join(collector.raw)
        assert PROMPT.encode() not in everything
        for secret in SECRETS:
            assert secret.encode() not in everything


async def test_a_request_without_traceparent_starts_a_trace(tmp_path: Path, collector: Collector,
                                                            fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    otel = f"otel: {{endpoint: '{collector.url}'}}"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url, extra_server=otel))
    async with run_serve_process(path, port, env=FAST_EXPORT) as gateway:
        client = gateway.openai_client(SERVE_ENV["TEAM_KEY"])
        stream = await client.chat.completions.create(
            model="gpt", stream=True, messages=[{"role": "user", "content": PROMPT}])
        async for _ in stream:
            pass
        with pytest.raises(Exception, match="401"):
            await gateway.openai_client("wrong-key").models.list()
        await wait_until(lambda: _count(collector, 3), "three spans at the collector")
        request = next(s for s in collector.spans if s.kind == Span.SPAN_KIND_SERVER
                       and attributes(s).get("http.response.status_code") == 200)
        assert request.parent_span_id == b""
        assert collector.resources[0]["service.name"] == "truckllm"
        refused = next(s for s in collector.spans
                       if attributes(s).get("http.response.status_code") == 401)
        assert "truckllm.key" not in attributes(refused)
        assert attributes(refused)["error.type"] == "authentication_error"
        upstream = next(r for r in fake.requests if r.path == "/v1/chat/completions")
        assert upstream.headers["traceparent"].split("-")[1] == request.trace_id.hex()
        for secret in SECRETS:
            assert secret.encode() not in b"".join(collector.raw)


async def _count(collector: Collector, spans: int) -> bool:
    return len(collector.spans) >= spans


def test_off_the_sdk_is_not_imported(tmp_path: Path) -> None:
    """Without server.otel, serving a request loads no OpenTelemetry module at all."""
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(free_port(), watch=False))
    script = f"""
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from truckllm.config.loader import load_file
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server.app import create_app

async def main():
    holder = StateHolder(build_state(load_file({str(path)!r}, {{**{SERVE_ENV!r}}}), 1))
    async with TestClient(TestServer(create_app(holder))) as client:
        response = await client.post("/v1/chat/completions", json={{
            "model": "demo", "messages": [{{"role": "user", "content": "hi"}}]}},
            headers={{"Authorization": "Bearer {SERVE_ENV['TEAM_KEY']}",
                     "traceparent": "00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}})
        assert response.status == 200, await response.text()
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
