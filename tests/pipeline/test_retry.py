"""Retry policy: classifying upstream outcomes, retry decisions, backoff, final errors."""

from __future__ import annotations

import random

import pytest

from truckllm.errors import Overloaded, UpstreamFailed, UpstreamStatus, UpstreamTimeout
from truckllm.pipeline.retry import (
    ErrorClass,
    Outcome,
    backoff_s,
    classify_response,
    connect_failed,
    final_error,
    is_retryable,
    parse_retry_after,
    recovery_wait_budget_s,
    timed_out,
)
from truckllm.providers.base import UpstreamErrorInfo

NOW = 1_800_000_000.0
DEFAULT_RETRY_ON: frozenset[int | str] = frozenset({429, 500, 502, 503, 504, 529, "timeout", "connect"})


def info(status: int, message: str, type: str = "invalid_request_error",
         code: str | None = None) -> UpstreamErrorInfo:
    return UpstreamErrorInfo(status=status, type=type, message=message, code=code)


@pytest.mark.parametrize(("status", "error_class"), [
    (429, ErrorClass.RATE_LIMITED), (402, ErrorClass.RATE_LIMITED),
    (401, ErrorClass.AUTH), (403, ErrorClass.AUTH),
    (500, ErrorClass.SERVER), (503, ErrorClass.SERVER), (529, ErrorClass.SERVER),
    (400, ErrorClass.CLIENT_ERROR), (404, ErrorClass.CLIENT_ERROR), (422, ErrorClass.CLIENT_ERROR),
])
def test_status_classes(status: int, error_class: ErrorClass) -> None:
    outcome = classify_response(status, {}, info(status, "something"), now_unix=NOW)
    assert outcome.error_class is error_class
    assert outcome.status == status


@pytest.mark.parametrize("upstream", [
    info(400, "This model's maximum context length is 8192 tokens.", code="context_length_exceeded"),
    info(400, "This model's maximum context length is 4096 tokens. However, you requested 5000"),
    info(400, "prompt is too long: 215000 tokens > 200000 maximum"),
    info(400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
    info(400, "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000"),
])
def test_context_overflow_is_recognised_across_providers(upstream: UpstreamErrorInfo) -> None:
    outcome = classify_response(400, {}, upstream, now_unix=NOW)
    assert outcome.error_class is ErrorClass.CONTEXT_OVERFLOW
    error = final_error(outcome, None)
    assert isinstance(error, UpstreamStatus)
    assert (error.status, error.code) == (400, "context_length_exceeded")


def test_a_429_mentioning_tokens_is_not_a_context_overflow() -> None:
    upstream = info(429, "Rate limit reached for tokens per min (TPM): Limit 30000", code="rate_limit_exceeded")
    assert classify_response(429, {}, upstream, now_unix=NOW).error_class is ErrorClass.RATE_LIMITED


def test_auth_failures_never_echo_the_upstream_message() -> None:
    upstream = info(401, "Incorrect API key provided: sk-proj-abc***wxyz", type="invalid_request_error",
                    code="invalid_api_key")
    outcome = classify_response(401, {}, upstream, now_unix=NOW)
    assert "sk-" not in outcome.message
    gemini = info(400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID")
    assert classify_response(400, {}, gemini, now_unix=NOW).error_class is ErrorClass.AUTH


def test_key_shaped_strings_are_masked() -> None:
    upstream = info(500, "oops for key sk-abcdefghijklmnop and AIzaSyA1234567890abcdef", type="server_error")
    outcome = classify_response(500, {}, upstream, now_unix=NOW)
    assert "sk-abc" not in outcome.message and "AIza" not in outcome.message


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "-3"}, None),
    ({}, None),
])
def test_retry_after_parsing(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers, now_unix=NOW) == seconds


def test_retry_after_http_date() -> None:
    headers = {"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}
    base = 1_800_000_000.0   # 2027-01-15T08:00:00Z
    assert parse_retry_after(headers, now_unix=base) == pytest.approx(30)
    assert parse_retry_after(headers, now_unix=base + 100) == 0


def test_rate_limit_outcome_carries_retry_after() -> None:
    outcome = classify_response(429, {"retry-after-ms": "1200"}, info(429, "slow"), now_unix=NOW)
    assert outcome.retry_after_s == pytest.approx(1.2)


def test_retry_decisions() -> None:
    server = classify_response(500, {}, info(500, "x", "server_error"), now_unix=NOW)
    assert is_retryable(server, DEFAULT_RETRY_ON)
    assert not is_retryable(server, frozenset[int | str]({429}))
    assert is_retryable(timed_out("first byte"), DEFAULT_RETRY_ON)
    assert not is_retryable(timed_out("first byte"), frozenset[int | str]({504}))
    assert is_retryable(connect_failed("refused"), frozenset[int | str]({"connect"}))
    assert is_retryable(Outcome(ErrorClass.AUTH, "no", 401), frozenset[int | str]())
    assert not is_retryable(Outcome(ErrorClass.CLIENT_ERROR, "bad", 400), DEFAULT_RETRY_ON | {400})
    assert not is_retryable(Outcome(ErrorClass.CONTEXT_OVERFLOW, "long", 400), DEFAULT_RETRY_ON)


def test_backoff_is_short_jittered_and_only_for_the_same_target() -> None:
    rng = random.Random(7)
    assert backoff_s(0, rng, same_target=False) == 0
    first = [backoff_s(0, rng, same_target=True) for _ in range(50)]
    assert all(0.05 <= b <= 0.1 for b in first) and len(set(first)) > 1
    assert all(0.5 <= backoff_s(9, rng, same_target=True) <= 1.0 for _ in range(50))


def test_recovery_wait_budget() -> None:
    assert recovery_wait_budget_s(attempts_made=0, wait_for_recovery_ms=0) == 0
    assert recovery_wait_budget_s(attempts_made=0, wait_for_recovery_ms=1500) == 1.5
    assert recovery_wait_budget_s(attempts_made=1, wait_for_recovery_ms=0) == 2.0
    assert recovery_wait_budget_s(attempts_made=1, wait_for_recovery_ms=5000) == 5.0


def test_final_errors() -> None:
    overloaded = final_error(None, 12.3)
    assert isinstance(overloaded, Overloaded) and overloaded.status == 503
    assert overloaded.headers() == {"Retry-After": "13"}
    limited = final_error(Outcome(ErrorClass.RATE_LIMITED, "slow", 429, 4), 4.0)
    assert isinstance(limited, Overloaded) and limited.headers() == {"Retry-After": "4"}
    timeout = final_error(timed_out("first byte"), 0)
    assert isinstance(timeout, UpstreamTimeout) and timeout.status == 504
    failed = final_error(Outcome(ErrorClass.SERVER, "upstream said 500", 500), 0)
    assert isinstance(failed, UpstreamFailed) and failed.status == 502
    assert failed.message == "upstream said 500"
    rejected = final_error(None, None)
    assert isinstance(rejected, UpstreamFailed)
    passthrough = final_error(classify_response(404, {}, info(404, "no such model", code="model_not_found"),
                                                now_unix=NOW), 0)
    assert isinstance(passthrough, UpstreamStatus)
    assert passthrough.body() == {"error": {"message": "no such model", "type": "invalid_request_error",
                                            "param": None, "code": "model_not_found"}}
    assert passthrough.status == 404


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"x-ratelimit-reset-requests": "1m30.5s", "x-ratelimit-reset-tokens": "250ms"}, 90.5),
    ({"x-ratelimit-reset-requests": "20s", "x-ratelimit-remaining-requests": "5",
      "x-ratelimit-reset-tokens": "6s", "x-ratelimit-remaining-tokens": "0"}, 6.0),
    ({"X-RateLimit-Reset-Tokens": "2"}, 2.0),
    ({"x-ratelimit-reset-requests": "soon"}, None),
    ({}, None),
])
def test_rate_limit_reset_headers_stand_in_for_retry_after(headers: dict[str, str],
                                                           seconds: float | None) -> None:
    outcome = classify_response(429, headers, info(429, "slow"), now_unix=NOW)
    assert outcome.retry_after_s == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_wins_over_reset_headers() -> None:
    headers = {"Retry-After": "3", "x-ratelimit-reset-requests": "1m"}
    assert classify_response(429, headers, info(429, "slow"), now_unix=NOW).retry_after_s == 3


def test_masking_leaves_ordinary_words_alone() -> None:
    upstream = info(400, "Unsupported value for task-management-settings", type="invalid_request_error")
    outcome = classify_response(400, {}, upstream, now_unix=NOW)
    assert outcome.message == "Unsupported value for task-management-settings"
