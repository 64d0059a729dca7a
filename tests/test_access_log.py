"""The access line: the direct JSON writer must produce what structlog's JSON chain
produces (same keys, same order, same values), and honour the configured level."""

from __future__ import annotations

import orjson
import pytest

from truckllm.config.schema import ServerConfig
from truckllm.log import access_line, access_logger, configure_logging, log_access
from truckllm.records import Exchange, RequestRecord
from truckllm.usage import Usage


def make_record(status: int = 200) -> RequestRecord:
    exchange = Exchange("req-1", "POST", "/v1/chat/completions")
    exchange.key_id, exchange.alias, exchange.provider_id = "team-a", "gpt-4o", "openai"
    exchange.upstream_model, exchange.attempts = "gpt-4o-2024", 1
    exchange.usage = Usage(prompt_tokens=12, completion_tokens=9)
    return exchange.finish(status)


def parsed_lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("status", [200, 429, 502])
def test_direct_line_matches_structlog_line(capsys: pytest.CaptureFixture[str], status: int) -> None:
    configure_logging("debug", "json")
    record = make_record(status)
    log_access(record)
    [through_structlog] = parsed_lines(capsys.readouterr().err)
    direct = orjson.loads(access_line(record))
    assert str(direct.pop("timestamp")).endswith("Z")
    through_structlog.pop("timestamp")
    assert list(direct.items()) == list(through_structlog.items())
    assert direct["level"] == record.level


@pytest.mark.parametrize(
    ("level", "statuses_written"),
    [("info", [200, 404, 500]), ("warning", [404, 500]), ("error", [500])],
)
def test_access_logger_honours_the_current_level(
    capsys: pytest.CaptureFixture[str], level: str, statuses_written: list[int]
) -> None:
    configure_logging(level, "json")
    observe = access_logger(lambda: ServerConfig(log_level=level, log_format="json"))  # type: ignore[arg-type]
    for status in (200, 404, 500):
        observe(make_record(status))
    assert [line["status"] for line in parsed_lines(capsys.readouterr().err)] == statuses_written


def test_console_format_goes_through_structlog(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    access_logger(lambda: ServerConfig(log_format="console"))(make_record())
    err = capsys.readouterr().err
    assert "request" in err and "req-1" in err
    assert not err.lstrip().startswith("{")
