"""The admin request log (ring buffer and filters), access lines, and secret redaction."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import orjson
import pytest
import structlog

from tests.observe.records import record_with
from truckllm.errors import InvalidRequest
from truckllm.observe.access_log import AccessLog
from truckllm.observe.log import configure_logging
from truckllm.observe.redaction import REDACTED, SecretRedactor
from truckllm.observe.request_log import LogQuery, RequestLog, log_entry
from truckllm.pipeline.record import RequestRecord
from truckllm.usage import Usage

SECRETS = ["sk-upstream-0123456789", "client-key-abcdef", "admin-key-xyz-987"]


def make_record(n: int, **overrides: object) -> RequestRecord:
    fields: dict[str, object] = dict(
        timestamp=1_700_000_000.0 + n, request_id=f"req-{n}", key_id="team-a", alias="gpt-4o",
        provider_id="openai", upstream_model="gpt-4o-2024", status=200, latency_s=0.25,
        overhead_s=0.0003, ttft_s=None, usage=Usage(prompt_tokens=3, completion_tokens=4),
        attempts=1, cost_usd=0.0001, error_reason=None, method="POST",
        path="/v1/chat/completions", stream=False)
    fields.update(overrides)
    return record_with(**fields)


def make_log(size: int = 100) -> RequestLog:
    log = RequestLog(size)
    log.add(make_record(1))
    log.add(make_record(2, provider_id="claude", alias="sonnet", upstream_model="claude-sonnet-4-5"))
    log.add(make_record(3, key_id="team-b", status=429, error_reason="rate_limited:key_rpm"))
    log.add(make_record(4, status=502, error_reason="upstream"))
    log.add(make_record(5, status=503, provider_id="claude", alias="sonnet"))
    return log


def ids(entries: list[dict[str, object]]) -> list[object]:
    return [entry["request_id"] for entry in entries]


def test_newest_first_and_limit() -> None:
    log = make_log()
    assert ids(log.query(LogQuery())) == ["req-5", "req-4", "req-3", "req-2", "req-1"]
    assert ids(log.query(LogQuery(limit=2))) == ["req-5", "req-4"]


@pytest.mark.parametrize(("params", "expected"), [
    ({"provider": "claude"}, ["req-5", "req-2"]),
    ({"model": "sonnet"}, ["req-5", "req-2"]),
    ({"model": "claude-sonnet-4-5"}, ["req-2"]),
    ({"key": "team-b"}, ["req-3"]),
    ({"level": "warning"}, ["req-5", "req-4", "req-3"]),
    ({"level": "error"}, ["req-5", "req-4"]),
    ({"status": "5xx"}, ["req-5", "req-4"]),
    ({"status": "429"}, ["req-3"]),
    ({"status": "200", "provider": "openai", "limit": "1"}, ["req-1"]),
    ({"provider": "nope"}, []),
])
def test_filters(params: dict[str, str], expected: list[str]) -> None:
    assert ids(make_log().query(LogQuery.from_params(params))) == expected


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "-1"}, {"limit": "ten"}, {"level": "loud"}, {"status": "200x"},
    {"status": "6xx"},
])
def test_bad_filters_are_invalid_requests(params: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        LogQuery.from_params(params)
    assert caught.value.param == next(iter(params))


def test_ring_buffer_keeps_only_the_newest() -> None:
    log = RequestLog(3)
    for n in range(10):
        log.add(make_record(n))
    assert ids(log.query(LogQuery())) == ["req-9", "req-8", "req-7"]
    log.resize(2)
    assert ids(log.query(LogQuery())) == ["req-9", "req-8"]
    log.resize(5)
    log.add(make_record(10))
    assert ids(log.query(LogQuery())) == ["req-10", "req-9", "req-8"]
    empty = RequestLog(0)
    empty.add(make_record(1))
    assert empty.query(LogQuery()) == []


def test_entry_has_the_spec_fields_and_no_content() -> None:
    entry = log_entry(make_record(1, ttft_s=0.1))
    for name in ("timestamp", "level", "request_id", "key_id", "provider", "model", "status",
                 "latency_ms", "tokens", "cost_usd"):
        assert name in entry
    assert entry["timestamp"] == "2023-11-14T22:13:21.000Z"
    assert entry["latency_ms"] == 250.0
    assert entry["tokens"] == 7
    assert entry["ttft_ms"] == 100.0
    assert not {"messages", "prompt", "content", "completion"} & set(entry)


def test_redactor_masks_known_secrets_everywhere() -> None:
    redactor = SecretRedactor(SECRETS)
    event = {
        "event": f"upstream said no to {SECRETS[0]}",
        "nested": {"list": [f"x{SECRETS[1]}y", 3, None], "authorization": "whatever"},
        "header": "Bearer some-token-value",
        "raw": SECRETS[2].encode(),
        "api_key": "short",
    }
    out = redactor(None, "info", dict(event))
    text = orjson.dumps(out).decode()
    for secret in [*SECRETS, "some-token-value", "whatever", "short"]:
        assert secret not in text
    assert out["event"] == "upstream said no to ***"
    assert out["header"] == "Bearer ***"
    assert out["nested"]["list"] == ["x***y", 3, None]


def test_redactor_update_replaces_the_set() -> None:
    redactor = SecretRedactor(["old-secret-1"])
    redactor.update(["new-secret-2"])
    assert redactor.redact_text("old-secret-1 new-secret-2") == "old-secret-1 ***"


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_json_access_line_and_stdlib_logs_are_redacted(captured: io.StringIO) -> None:
    access = AccessLog()
    configure_logging("info", "json", SecretRedactor(SECRETS), captured, access)
    logger = structlog.get_logger("truckllm.access")
    access.write(make_record(1, status=502, error_reason="upstream"))
    logger.debug("hidden at info level")
    try:
        raise RuntimeError(f"failed with key {SECRETS[0]}")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request %s", SECRETS[1])
        logger.exception("boom")

    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    access = lines[0]
    assert access["event"] == "request"
    assert access["level"] == "error"
    assert access["status"] == 502 and access["request_id"] == "req-1"
    assert access["prompt_tokens"] == 3 and access["attempts"] == 1
    assert not [line for line in lines if line["event"] == "hidden at info level"]
    assert len(lines) == 3
    for secret in SECRETS:
        assert secret not in captured.getvalue()


def test_console_format_and_level_change(captured: io.StringIO) -> None:
    configure_logging("debug", "console", SecretRedactor(SECRETS), captured)
    structlog.get_logger().debug("visible", secret_in_text=SECRETS[2])
    text = captured.getvalue()
    assert "visible" in text and SECRETS[2] not in text
    assert not text.lstrip().startswith("{")


def access_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [line for line in map(orjson.loads, stream.getvalue().splitlines())
            if line["event"] == "request"]


CLIENT_TEXT = {"request_id": f"id-{SECRETS[1]}", "client_request_id": True,
               "path": f"/v1/{SECRETS[0]}", "method": SECRETS[2],
               "upstream_model": f"m-{SECRETS[0]}", "error_reason": "Bearer abcdefgh12345"}


@pytest.mark.parametrize("record", [
    make_record(1),
    make_record(2, status=429, usage=None, cost_usd=None, error_reason="rate_limited:key_rpm"),
    make_record(3, status=502, ttft_s=0.01, stream=True, **CLIENT_TEXT),
], ids=["ok", "refused", "client-text"])
def test_the_direct_json_access_line_is_the_structlog_line(
        captured: io.StringIO, record: RequestRecord) -> None:
    """The JSON access line is written without structlog; it must be the line structlog
    writes (same fields, order, values and masking), apart from the moment it was taken."""
    redactor = SecretRedactor(SECRETS)
    direct = AccessLog()
    configure_logging("info", "json", redactor, captured, direct)
    direct.write(record)
    AccessLog().write(record)       # never configured itself: through structlog
    ours, theirs = access_lines(captured)
    timestamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"
    assert re.fullmatch(timestamp, str(ours.pop("timestamp")))
    assert re.fullmatch(timestamp, str(theirs.pop("timestamp")))
    assert list(ours.items()) == list(theirs.items())
    for secret in [*SECRETS, "abcdefgh12345"]:
        assert secret not in captured.getvalue()


def test_the_access_line_follows_level_format_and_secrets(captured: io.StringIO) -> None:
    redactor = SecretRedactor()
    access = AccessLog()
    configure_logging("warning", "json", redactor, captured, access)
    for status in (200, 429, 502):
        access.write(make_record(status, status=status))
    assert [line["level"] for line in access_lines(captured)] == ["warning", "error"]

    redactor.update(["req-77-new"])             # a reload added a secret
    configure_logging("error", "json", redactor, captured, access)
    access.write(make_record(77, status=429))
    access.write(make_record(77, status=503, path="/v1/req-77-new"))
    assert [(line["status"], line["request_id"], line["path"])
            for line in access_lines(captured)[2:]] == [(503, "req-77", f"/v1/{REDACTED}")]

    configure_logging("info", "console", redactor, captured, access)
    access.write(make_record(78, request_id="console-line"))
    assert "console-line" in captured.getvalue().splitlines()[-1]
    assert not captured.getvalue().splitlines()[-1].startswith("{")


def test_recurring_texts_are_tested_again_when_the_secrets_change(captured: io.StringIO) -> None:
    """The verdict on a line's recurring texts (method, path, model, error) is remembered:
    a reload that makes one of them a secret must mask it from the next line on, and the
    request id is tested on every line."""
    redactor = SecretRedactor(SECRETS)
    access = AccessLog()
    configure_logging("info", "json", redactor, captured, access)
    seen = make_record(1, path="/v1/soon-secret", upstream_model="model-x")
    access.write(seen)
    access.write(make_record(2, path="/v1/soon-secret", upstream_model="model-x",
                             request_id=f"id-{SECRETS[0]}", client_request_id=True))
    redactor.update([*SECRETS, "soon-secret"])  # a reload added a secret
    access.write(seen)
    assert [(line["request_id"], line["path"]) for line in access_lines(captured)] == [
        ("req-1", "/v1/soon-secret"), (f"id-{REDACTED}", "/v1/soon-secret"),
        ("req-1", f"/v1/{REDACTED}")]


def test_a_file_stream_gets_the_same_lines_as_bytes_in_order(tmp_path: object) -> None:
    """On a UTF-8 file (stderr in production) the access line is written to the file
    itself; it must stay in order with structlog's lines and be masked the same way."""
    path = f"{tmp_path}/log.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        access = AccessLog()
        configure_logging("info", "json", SecretRedactor(SECRETS), stream, access)
        try:
            logger = structlog.get_logger("truckllm.test")
            logger.info("before", detail=SECRETS[0])
            access.write(make_record(1, path=f"/v1/{SECRETS[1]}", upstream_model="modèle"))
            logger.info("after")
            access.write(make_record(2))
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()
    text = Path(path).read_text(encoding="utf-8")
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["before", "request", "after", "request"]
    assert lines[1]["path"] == f"/v1/{REDACTED}" and lines[1]["upstream_model"] == "modèle"
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("secrets", [SECRETS, [f"secret-number-{n:03d}" for n in range(40)]],
                         ids=["few", "many"])
def test_would_mask_agrees_with_redact_text(secrets: list[str]) -> None:
    redactor = SecretRedactor(secrets)
    for text in ["plain text", f"x{secrets[-1]}y", "Bearer abcdefgh12345", "Bearer short",
                 f"{secrets[0][:-1]}\0{secrets[0][-1]}", "Basic dXNlcjpwYXNzd29yZA=="]:
        assert redactor.would_mask(text) == (redactor.redact_text(text) != text), text


class WritesSeen(io.StringIO):
    """A stream that remembers each write: processes sharing one stream (--workers)
    interleave writes, so a line must be one write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_line_is_one_write(fmt: str) -> None:
    stream = WritesSeen()
    access = AccessLog()
    configure_logging("info", fmt, SecretRedactor(SECRETS), stream, access)
    structlog.get_logger("truckllm.state").warning("state_backend_down", error="refused")
    logging.getLogger("aiohttp.server").warning("stdlib line")
    access.write(make_record(1))
    written = [text for text in stream.writes if text]
    assert len(written) == 3
    assert all(text.endswith("\n") and text.count("\n") == 1 for text in written)
