"""What the benchmark runs TruckLLM with: its generated config, its command line, and the
check that a target answers before it is measured."""

from __future__ import annotations

import importlib.util
import sys
import urllib.request
from pathlib import Path

import orjson

from bench.runner import VIA_CHAT_SUFFIX

CLIENT_KEY = "sk-bench-client-0123456789"
ALIAS = "bench-model"
UPSTREAM_MODEL = "gpt-4o-mini"


def truckllm_config(port: int, upstream_port: int) -> str:
    """Auth on (one client key), one priced alias routed to an `openai` provider (the fake);
    everything else at its defaults: JSON access log at info, metrics, config watching.
    A second alias reaches the same fake through a provider that translates the Responses
    API through chat (the Responses scenario `via chat`)."""
    return f"""version: 1
server:
  host: 127.0.0.1
  port: {port}
providers:
  - id: fake
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    keys:
      - id: bench
        value: sk-bench-upstream
  - id: fake-chat
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    responses: chat
    keys:
      - id: bench
        value: sk-bench-upstream
models:
  - alias: {ALIAS}
    targets:
      - {{provider: fake, model: {UPSTREAM_MODEL}}}
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
  - alias: {ALIAS}{VIA_CHAT_SUFFIX}
    targets:
      - {{provider: fake-chat, model: {UPSTREAM_MODEL}}}
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
keys:
  - id: bench
    key: {CLIENT_KEY}
"""


def truckllm_command(config: Path, port: int) -> list[str]:
    if importlib.util.find_spec("truckllm.__main__") is not None:
        return [sys.executable, "-m", "truckllm", "serve", "-c", str(config), "--port", str(port)]
    return [str(Path(sys.executable).with_name("truckllm")), "serve", "-c", str(config), "--port", str(port)]


def check_answers(port: int, key: str, model: str) -> None:
    """One request through the target before measuring: it must answer 200 with a choice."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = orjson.loads(response.read())
    if not answer.get("choices"):
        raise RuntimeError(f"unexpected answer: {answer!r}")
