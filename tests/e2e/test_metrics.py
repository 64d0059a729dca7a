"""What a running gateway counts when upstreams fail (/metrics, /admin/v1/providers, the
request log): a stream cut after its first chunk, audio that breaks off; and metric labels
that never carry what a client typed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.azure_fake import SPEECH
from tests.fakes.openai_fake import OpenAIFake, Scripted, make_openai_fake
from tests.fakes.wire_fake import Reply
from tests.harness import (
    CLIENT_KEY,
    SECRETS,
    SERVE_ENV,
    client_for,
    free_port,
    make_stack,
    metric_samples,
    provider_keys,
    run_serve_process,
    serve_config,
)


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIFake]:
    async with make_openai_fake() as running:
        yield running


async def test_a_stream_that_fails_after_its_first_chunk_counts_as_an_upstream_error(
        tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        fake.script(Scripted(drop_after_chunks=2))
        stream = await client.chat.completions.create(
            model="gpt", stream=True, messages=[{"role": "user", "content": "tell me more"}])
        seen: list[str] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen.extend(choice.delta.content or "" for choice in chunk.choices)
        assert seen                                     # the failure came after output
        await client.close()

        samples = await metric_samples(gateway)
        assert samples[("llm_requests_total",
                        (("model", "gpt"), ("provider", "openai"), ("status", "200")))] == 1
        errors = {labels: value for (name, labels), value in samples.items()
                  if name == "llm_upstream_errors_total"}
        assert errors == {(("key", "main"), ("provider", "openai"), ("reason", "connect")): 1}

        main = (await provider_keys(gateway))["openai/main"]
        assert (main["usage_req"], main["errors"], main["last_error"]) == (1, 1, "connect")
        code, body, _ = await gateway.admin("GET", "/admin/v1/logs")
        assert code == 200
        [entry] = body["logs"]
        assert entry["status"] == 200 and entry["error"] == "connect" and entry["stream"] is True


async def test_audio_that_breaks_off_is_an_incomplete_body_and_an_upstream_error() -> None:
    async with make_stack() as stack:
        stack.azure.script(Reply(events=[SPEECH[:256], SPEECH[256:512], SPEECH[512:]],
                                 drop_after_events=2, path="audio/speech"))
        client = AsyncOpenAI(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, timeout=10)
        received = b""
        with pytest.raises(Exception, match="incomplete"):     # never a short "whole" file
            async with client.audio.speech.with_streaming_response.create(
                    model="az-tts", voice="alloy", input="Hello there") as response:
                async for chunk in response.iter_bytes():
                    received += chunk
        await client.close()
        assert received == SPEECH[:512]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(stack.root + "/metrics") as scraped:
            text = await scraped.text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("llm_upstream_errors_total",
                        (("key", "k1"), ("provider", "az"), ("reason", "connect")))] == 1


async def test_metric_labels_never_carry_what_a_client_sent(tmp_path: Path, fake: OpenAIFake) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(serve_config(port, watch=False, openai_url=fake.url))
    raw = ["evil-model-<x>\"", "raw-user-key-5f1d", "raw-request-id-77", "raw-path-segment"]
    async with run_serve_process(path, port) as gateway:
        client = client_for(gateway)
        await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model=raw[0], messages=[{"role": "user", "content": "b"}],
                extra_headers={"X-Request-ID": raw[2]})
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve(raw[0])
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model=raw[0], input="c")
        stranger = client_for(gateway, key=raw[1])
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "d"}])
        await stranger.close()
        await client.close()
        headers = {"Authorization": f"Bearer {SERVE_ENV['TEAM_KEY']}", "x-api-key": raw[1]}
        for url, body in ((f"/v1/{raw[3]}", b"{}"), ("/v1/messages",
                          orjson.dumps({"model": raw[0], "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "e"}]}))):
            async with gateway.http.post(gateway.root + url, data=body, headers=headers) as response:
                assert response.status == 404

        code, text = await gateway.get("/metrics")
        assert code == 200
        for value in [*raw, *SECRETS, "evil-model"]:
            assert value not in text
        samples = await metric_samples(gateway)
        allowed = {"model": {"demo", "gpt", ""}, "provider": {"demo", "openai", ""},
                   "key": {"team-a", "main", "backup", "k1", ""}}
        seen: dict[str, set[str]] = {name: set() for name in allowed}
        for _, labels in samples:
            for name, value in labels:
                if name in seen:
                    seen[name].add(value)
        for name, values in seen.items():
            assert values <= allowed[name], (name, values - allowed[name])
        assert samples[("llm_requests_total", (("model", ""), ("provider", ""), ("status", "404")))] >= 4
        assert samples[("llm_requests_total", (("model", ""), ("provider", ""), ("status", "401")))] == 1
