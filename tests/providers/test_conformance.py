"""The conformance suite: every golden case under tests/golden/<provider>/<case>/ runs
through its provider's real translation functions.

A case directory holds:
  meta.json               operation, target (model, base_url, options), features it covers
  client_request.json     what the client sent
  upstream_request.json   what TruckLLM must send upstream (absent when the request is refused)
  upstream_response.json  {"status": N, "body": ...} from upstream, or
  upstream_stream.sse     the recorded SSE body of a 200 stream
  expected_response.json  {"status": N, "body": ...}: the client's answer (or the 400 refusal,
                          or the upstream error reduced to OpenAI terms), or
  expected_chunks.jsonl   the chunk payloads the client receives, one per line; a stream that
                          fails ends with {"status": N, "error": {...}}

A Responses reasoning item's `encrypted_content` is sealed with a secret made per process:
in client_request.json `{"$sealed": <state>}` stands for the state sealed by this process,
and in what the code produces a sealed value is shown as `{"$sealed": <state it opens to>}`.

Every stream is also fed in small byte slices (the output must not change) and checked
against the invariants the official SDKs rely on, whatever its golden says.
Set TRUCKLLM_REGEN_GOLDEN=1 to rewrite upstream_request.json and expected_* from the code
(then review the diff: a golden is only as good as its reading).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import check_stream_invariants
from truckllm.config.schema import AnthropicProvider, AzureProvider, GeminiProvider
from truckllm.errors import GatewayError, InvalidRequest
from truckllm.pipeline.sse import SSEDecoder
from truckllm.protocols.responses.sealed import PREFIX, seal, unseal
from truckllm.providers.base import CallContext, Operation, OperationSpec, ProviderSpec, Target
from truckllm.providers.registry import REGISTRY
from truckllm.runtime.state import compile_key

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REGEN = os.environ.get("TRUCKLLM_REGEN_GOLDEN") == "1"
CONFIGS = {"anthropic": AnthropicProvider, "gemini": GeminiProvider, "azure": AzureProvider}
CASES = sorted(p for p in GOLDEN.glob("*/*") if (p / "meta.json").exists())


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def dump(path: Path, value: Any) -> None:
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def sealed_in(value: Any) -> Any:
    """A client request with each `{"$sealed": state}` sealed as this process seals it."""
    if isinstance(value, dict):
        if set(value) == {"$sealed"}:
            return seal(value["$sealed"])
        return {k: sealed_in(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sealed_in(v) for v in value]
    return value


def sealed_shown(value: Any) -> Any:
    """Produced output with each sealed value shown as the state it opens to."""
    if isinstance(value, str) and value.startswith(PREFIX):
        return {"$sealed": unseal(value)}
    if isinstance(value, dict):
        return {k: sealed_shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sealed_shown(v) for v in value]
    return value


def make_target(provider_type: str, meta: dict[str, Any]) -> Target:
    """A Target compiled the way truckllm.runtime.state does it: settings are the type's config."""
    spec = meta.get("target", {})
    fields = {"id": "golden", "type": provider_type, "keys": [{"id": "k", "value": "test-key"}],
              **spec.get("config", {})}
    config = CONFIGS[provider_type].model_validate(fields)
    base_url = getattr(config, "base_url", None) or REGISTRY[provider_type].default_base_url or ""
    return Target("golden", provider_type, spec.get("model", "model-x"), base_url.rstrip("/"),
                  dict(config.headers), config)


def make_context(body: dict[str, Any], meta: dict[str, Any]) -> CallContext:
    """The request's context; `client_headers` in meta are the client headers the
    operation forwards (e.g. `anthropic-beta` on the Messages API)."""
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    messages = meta["operation"] == "messages"     # a Messages stream always reports usage
    return CallContext(alias=body.get("model", "alias"), request_id="req_golden", created=1_700_000_000,
                       stream=stream, include_usage=stream and (messages or options.get("include_usage") is True),
                       client_body=body, forward_headers=meta.get("client_headers", {}),
                       response_id="resp_golden")


def error_record(exc: GatewayError) -> dict[str, Any]:
    return {"status": exc.status, **exc.body()}


def run_case(case: Path) -> dict[str, Any]:
    """Everything the code produces for a case, keyed by the golden file it is compared to."""
    meta = load(case / "meta.json")
    provider_type = case.parent.name
    provider: ProviderSpec = REGISTRY[provider_type]
    operation = Operation(meta["operation"])
    body = sealed_in(load(case / "client_request.json"))
    target, ctx = make_target(provider_type, meta), make_context(body, meta)
    key = compile_key(provider, target.headers, "k", "test-key")
    produced: dict[str, Any] = {}
    spec = provider.operations.get(operation)
    if spec is None:        # routing never sends it there; the client would be refused
        refused = InvalidRequest(f"provider type {provider_type!r} cannot serve {operation}",
                                 code="unsupported_operation")
        produced["expected_response.json"] = error_record(refused)
        return produced
    try:
        request = spec.build_request(body, target, key, ctx)
    except GatewayError as exc:
        produced["expected_response.json"] = error_record(exc)
        return produced
    produced["upstream_request.json"] = {
        "method": request.method, "url": request.url, "headers": dict(request.headers),
        "stream": request.stream, "body": orjson.loads(request.body) if request.body else None,
    }
    if (case / "upstream_stream.sse").exists():
        raw = (case / "upstream_stream.sse").read_bytes()
        produced["expected_chunks.jsonl"] = translate_stream(spec, target, ctx, [raw])
        sliced = [raw[i:i + 7] for i in range(0, len(raw), 7)]
        assert translate_stream(spec, target, ctx, sliced) == produced["expected_chunks.jsonl"], \
            "a stream fed in small slices must translate to the same chunks"
        return produced
    upstream = load(case / "upstream_response.json")
    raw_body = orjson.dumps(upstream["body"]) if not isinstance(upstream["body"], str) else upstream["body"].encode()
    if upstream["status"] >= 400:
        info = provider.parse_error(upstream["status"], raw_body)
        produced["expected_response.json"] = {
            "status": info.status, "type": info.type, "message": info.message, "code": info.code,
            "param": info.param, "retry_after_s": info.retry_after_s}
        return produced
    assert spec.parse_response is not None
    try:
        parsed = spec.parse_response(raw_body, target, ctx)
    except GatewayError as exc:
        produced["expected_response.json"] = error_record(exc)
        return produced
    usage = parsed.usage
    produced["expected_response.json"] = {
        "status": 200, "body": orjson.loads(parsed.body),
        "usage": None if usage is None else {
            "prompt": usage.prompt_tokens, "completion": usage.completion_tokens,
            "cache_read": usage.cache_read_tokens, "cache_write": usage.cache_write_tokens}}
    return produced


def translate_stream(spec: OperationSpec, target: Target, ctx: CallContext,
                     pieces: list[bytes]) -> list[Any]:
    assert spec.new_stream_translator is not None
    translator = spec.new_stream_translator(target, ctx)
    decoder = SSEDecoder()
    out: list[Any] = []
    try:
        for piece in pieces:
            for event in decoder.feed(piece):
                out += [orjson.loads(e.data) for e in translator.feed(event)]
        for event in decoder.flush():
            out += [orjson.loads(e.data) for e in translator.feed(event)]
        out += [orjson.loads(e.data) for e in translator.close()]
    except GatewayError as exc:
        out.append(error_record(exc))
    usage = translator.usage
    out.append({"_usage_seen": None if usage is None else [
        usage.prompt_tokens, usage.completion_tokens, usage.cache_read_tokens, usage.cache_write_tokens]})
    return out


def check_responses_event_invariants(events: list[Any]) -> None:
    """What the OpenAI SDKs and Codex rely on in a Responses event stream, for every
    translated one: `type` and a rising `sequence_number` on every event, the same
    response id throughout, item ids that do not change, `logprobs` on text events, and
    one terminal event, last."""
    payloads = [e for e in events if "_usage_seen" not in e and "error" not in e]
    assert payloads[0]["type"] == "response.created" and payloads[1]["type"] == "response.in_progress"
    numbers = [e["sequence_number"] for e in payloads]
    assert numbers == list(range(len(numbers))), "sequence numbers start at 0 and rise by one"
    responses = [e["response"] for e in payloads if "response" in e]
    assert len({r["id"] for r in responses}) == 1, "one response id for the whole stream"
    items: dict[int, str] = {}
    for event in payloads:
        if "item" in event:
            assert items.setdefault(event["output_index"], event["item"]["id"]) == event["item"]["id"]
        elif "item_id" in event:
            assert items[event["output_index"]] == event["item_id"], "events name their item's id"
        if event["type"].startswith("response.output_text."):
            assert event["logprobs"] == [], "text events carry logprobs"
    terminal = [e for e in payloads if e["type"] in ("response.completed", "response.incomplete",
                                                     "response.failed")]
    if not any("error" in e for e in events):
        assert len(terminal) == 1 and terminal[0] is payloads[-1], "one terminal event, last"
        assert [i["id"] for i in terminal[0]["response"]["output"]] == [items[k] for k in sorted(items)]


def check_messages_event_invariants(events: list[Any]) -> None:
    """What the Anthropic SDKs rely on in a Messages stream, native or translated:
    message_start first; each content block started, its deltas, stopped, in index order
    and one at a time; message_delta with the stop reason and usage, then message_stop, last."""
    payloads = [e for e in events if "_usage_seen" not in e]
    kinds = [e["type"] for e in payloads if e["type"] != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    open_block: int | None = None
    next_index = 0
    for event in payloads:
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == next_index, "blocks open one at a time, in order"
            open_block, next_index = event["index"], next_index + 1
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_block, "deltas belong to the open block"
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
    assert open_block is None, "every block is stopped"
    final = next(e for e in payloads if e["type"] == "message_delta")
    assert final["delta"]["stop_reason"] and "output_tokens" in final["usage"]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_golden_case(case: Path) -> None:
    produced = sealed_shown(run_case(case))
    for name, value in produced.items():
        path = case / name
        if REGEN:
            if name.endswith(".jsonl"):
                path.write_bytes(b"".join(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) + b"\n" for v in value))
            else:
                dump(path, value)
            continue
        assert path.exists(), f"{case.name}: missing golden {name}"
        expected = ([orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
                    if name.endswith(".jsonl") else load(path))
        assert value == expected, f"{case.parent.name}/{case.name}: {name} differs"
    operation = load(case / "meta.json")["operation"]
    if "expected_chunks.jsonl" in produced and operation == "messages":
        check_messages_event_invariants(produced["expected_chunks.jsonl"])
    elif "expected_chunks.jsonl" in produced and operation == "responses":
        check_responses_event_invariants(produced["expected_chunks.jsonl"])
    elif "expected_chunks.jsonl" in produced:
        body = load(case / "client_request.json")
        check_stream_invariants(produced["expected_chunks.jsonl"],
                                (body.get("stream_options") or {}).get("include_usage") is True)
    stale = {"upstream_request.json", "expected_response.json", "expected_chunks.jsonl"} - set(produced)
    for name in stale:
        assert REGEN or not (case / name).exists(), f"{case.name}: {name} is stale"


def test_suite_is_not_empty() -> None:
    assert {c.parent.name for c in CASES} >= {"anthropic", "gemini", "azure"}
    assert len(CASES) >= 40

