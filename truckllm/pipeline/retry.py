"""Retry policy as pure functions: classify an upstream outcome, decide whether another
attempt may follow, how long to back off, and which error the client gets at the end.

Pure: no I/O, no clocks (callers pass times in). Imports only truckllm.errors and the
provider types; must not import health, router or dispatch.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from truckllm.errors import (
    GatewayError,
    Overloaded,
    UpstreamFailed,
    UpstreamStatus,
    UpstreamTimeout,
)
from truckllm.providers.base import UpstreamErrorInfo

# Backoff before trying the same target again: full jitter over an exponential step.
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 1.0
# After an attempt of this request was refused with a Retry-After this short, waiting for
# the key to recover beats failing: the client's own SDK would do the same.
SHORT_RETRY_AFTER_S = 2.0
# When the only thing blocking every candidate is a key's own rpm/tpm, it frees up soon.
CAPACITY_RETRY_S = 1.0
# The longest Retry-After honoured (an upstream's daily quota): beyond it a value is
# nonsense, and would push times past what clocks and dates can show.
MAX_RETRY_AFTER_S = 86_400.0
_MESSAGE_LIMIT = 2000
_MIN_MASKED_SECRET = 8


class ErrorClass(StrEnum):
    RATE_LIMITED = "rate_limited"           # 429 (and 402): cool this key
    AUTH = "auth"                           # 401/403: disable this key until reload
    SERVER = "server"                       # 5xx: counts towards the breakers
    TIMEOUT = "timeout"                     # no first byte / stream stalled / total time
    CONNECT = "connect"                     # refused, reset, DNS, connect timeout
    CLIENT_ERROR = "client_error"           # the client's request is at fault: pass through
    CONTEXT_OVERFLOW = "context_overflow"   # prompt too long for this model


# Failures that say something about the upstream's health (the breakers count them).
HEALTH_FAILURES = frozenset({ErrorClass.SERVER, ErrorClass.TIMEOUT, ErrorClass.CONNECT})
# Failures after which the same target is unlikely to do better on another key.
TARGET_FAILURES = HEALTH_FAILURES


@dataclass(frozen=True, slots=True)
class Outcome:
    """One failed upstream attempt, reduced to what routing and the client need."""

    error_class: ErrorClass
    message: str                            # safe to show a client: no secrets
    status: int | None = None               # upstream HTTP status; None when none arrived
    retry_after_s: float | None = None      # from Retry-After / retry-after-ms
    info: UpstreamErrorInfo | None = None   # the upstream's error, for 4xx passthrough

    @property
    def retry_on_name(self) -> int | str:
        """The `routing.retry_on` entry that covers this outcome."""
        if self.error_class is ErrorClass.TIMEOUT and self.status is None:
            return "timeout"
        if self.error_class is ErrorClass.CONNECT:
            return "connect"
        return self.status if self.status is not None else self.error_class.value


def failure_reason(outcome: Outcome) -> str:
    """The short fixed word metrics count a failed attempt under: "429", "timeout", ..."""
    return str(outcome.retry_on_name)


_OVERLOADED_STATUSES = frozenset({503, 529})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "model_context_window_exceeded",
                            "string_above_max_length"})
_CONTEXT_PHRASES = re.compile(
    r"context[ _]length|context window|maximum context|prompt is too long"
    r"|input (?:is )?too long|exceeds the maximum number of tokens"
    r"|exceed(?:s|ed)? context limit|reduce the length of the messages"
    r"|too large for model with",
    re.IGNORECASE,
)
# Shapes of upstream secrets an upstream might echo back (OpenAI, Anthropic, Google, Groq).
_SECRET_SHAPES = re.compile(r"\b(?:sk|gsk|xai)-[A-Za-z0-9_\-*]{6,}|\bAIza[0-9A-Za-z_\-]{10,}")


def is_context_overflow(status: int, info: UpstreamErrorInfo | None) -> bool:
    """An upstream saying the prompt does not fit: OpenAI's `context_length_exceeded`,
    Anthropic's "prompt is too long", Gemini's "exceeds the maximum number of tokens"."""
    if info is None or status not in (400, 413, 422):
        return False
    if info.code in _CONTEXT_CODES:
        return True
    return bool(_CONTEXT_PHRASES.search(info.message))


def classify_response(status: int, headers: Mapping[str, str],
                      info: UpstreamErrorInfo | None, *, now_unix: float) -> Outcome:
    """An upstream answered with a non-2xx status."""
    retry_after = parse_retry_after(headers, now_unix=now_unix)
    if retry_after is None and info is not None:
        retry_after = info.retry_after_s        # e.g. Gemini's RetryInfo in the body
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER_S)
    if info is not None:
        info = scrub_info(info)
    upstream_message = info.message if info else f"upstream answered {status}"
    if status in (401, 403) or (info is not None and _names_bad_key(info)):
        # The client's key was fine; ours was not. Never repeat the upstream's words.
        return Outcome(ErrorClass.AUTH, f"upstream rejected the gateway's credentials ({status})",
                       status, None, info)
    if status in (402, 429):
        if retry_after is None:
            reset = parse_rate_limit_reset(headers)
            retry_after = None if reset is None else min(reset, MAX_RETRY_AFTER_S)
        return Outcome(ErrorClass.RATE_LIMITED, upstream_message, status, retry_after, info)
    if status >= 500 or status == 408:
        return Outcome(ErrorClass.SERVER, upstream_message, status, retry_after, info)
    if is_context_overflow(status, info):
        return Outcome(ErrorClass.CONTEXT_OVERFLOW, upstream_message, status, None, info)
    return Outcome(ErrorClass.CLIENT_ERROR, upstream_message, status, None, info)


def _names_bad_key(info: UpstreamErrorInfo) -> bool:
    # Gemini says 400 INVALID_ARGUMENT for a bad key; adapters may report it either way.
    return (info.status in (401, 403) or info.code in ("invalid_api_key", "API_KEY_INVALID")
            or info.type == "authentication_error")


def event_outcome(error: GatewayError, *, now_unix: float) -> Outcome:
    """An error event inside a stream (raised by a translator), classified like a status."""
    info = UpstreamErrorInfo(error.status, error.type, error.message, error.code, error.param,
                             error.retry_after_s)
    return classify_response(error.status, {}, info, now_unix=now_unix)


def timed_out(phase: str) -> Outcome:
    """No answer in time. `phase`: "first byte", "stream idle" or "total"."""
    return Outcome(ErrorClass.TIMEOUT, f"upstream timed out ({phase})")


def connect_failed(detail: str) -> Outcome:
    """The upstream could not be reached or dropped the connection before answering."""
    return Outcome(ErrorClass.CONNECT, f"upstream unreachable: {scrub(detail)}")


def transport_failed(kind: str, detail: str) -> Outcome:
    """A transport failure: kind "timeout" (first byte, stall, total) or "connect"."""
    error_class = ErrorClass.TIMEOUT if kind == "timeout" else ErrorClass.CONNECT
    return Outcome(error_class, scrub(detail))


def parse_retry_after(headers: Mapping[str, str], *, now_unix: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `Retry-After` (seconds or HTTP date)."""
    lowered = {name.lower(): value for name, value in headers.items()
               if name.lower() in ("retry-after", "retry-after-ms")}
    millis = _non_negative(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    text = lowered.get("retry-after")
    if text is None:
        return None
    seconds = _non_negative(text)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_unix)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """When a 429 has no Retry-After: OpenAI-style `x-ratelimit-reset-requests` /
    `-tokens` ("1m30.5s", "250ms"), taking the exhausted one (remaining 0) if known."""
    lowered = {name.lower(): value for name, value in headers.items()
               if name.lower().startswith("x-ratelimit-")}
    resets = {}
    for kind in ("requests", "tokens"):
        seconds = _duration_s(lowered.get(f"x-ratelimit-reset-{kind}"))
        if seconds is not None:
            resets[kind] = seconds
    exhausted = [resets[k] for k in resets if lowered.get(f"x-ratelimit-remaining-{k}", "").strip() == "0"]
    if exhausted:
        return max(exhausted)
    return max(resets.values()) if resets else None


def _duration_s(text: str | None) -> float | None:
    if not text:
        return None
    parts = _DURATION_PART.findall(text.strip())
    if not parts:
        return _non_negative(text)
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _non_negative(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def is_retryable(outcome: Outcome, retry_on: Collection[int | str]) -> bool:
    """May another attempt follow this one? Auth failures always move to another key:
    the client's request was fine, only our credential was not."""
    if outcome.error_class is ErrorClass.AUTH:
        return True
    if outcome.error_class in (ErrorClass.CLIENT_ERROR, ErrorClass.CONTEXT_OVERFLOW):
        return False
    return outcome.retry_on_name in retry_on


def backoff_s(retry_index: int, rng: random.Random, *, same_target: bool) -> float:
    """Pause before the next attempt. Another target or key needs none; the same target
    gets a short, jittered, growing pause (retry_index counts from 0)."""
    if not same_target:
        return 0.0
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** max(0, retry_index)))
    return rng.uniform(step / 2, step)


def recovery_wait_budget_s(*, attempts_made: int, wait_for_recovery_ms: float) -> float:
    """How long a request may wait for a cooling candidate to recover. Before any attempt
    only the configured wait applies (else 503 at once); after an upstream told us to come
    back shortly, honouring that short Retry-After is allowed too."""
    configured = wait_for_recovery_ms / 1000
    return max(configured, SHORT_RETRY_AFTER_S) if attempts_made else configured


def passthrough_error(outcome: Outcome) -> UpstreamStatus:
    """A 4xx the client caused, returned with the upstream's status, type, code and param."""
    info = outcome.info
    status = outcome.status or 400
    code = info.code if info else None
    if outcome.error_class is ErrorClass.CONTEXT_OVERFLOW:
        code = "context_length_exceeded"
    return UpstreamStatus(status, outcome.message,
                          type=(info.type if info and info.type else "invalid_request_error"),
                          code=code, param=info.param if info else None)


def final_error(last: Outcome | None, recovery_s: float | None,
                cause: str | None = None) -> GatewayError:
    """The error for a request no attempt could serve.

    `last` is the last attempt's outcome (None when nothing could be tried), `recovery_s`
    the time until the earliest candidate recovers (0 when one is usable now, None when
    none will, e.g. every key was rejected). Client errors pass through; nothing tried, or
    the last try rate-limited, while candidates are cooling is 503 with Retry-After; a
    timeout is 504; anything else is 502. `cause`, when nothing was tried: the last
    failure of these candidates (why they are cooling), said in the message.
    """
    if last is not None and last.error_class in (ErrorClass.CLIENT_ERROR, ErrorClass.CONTEXT_OVERFLOW):
        return passthrough_error(last)
    cooling = recovery_s is not None and (last is None or last.error_class is ErrorClass.RATE_LIMITED)
    if cooling and recovery_s is not None:
        because = f" (last failure: {cause})" if last is None and cause else ""
        return Overloaded("every upstream for this model is cooling down or at its limit"
                          f"{because}; retry after the time in Retry-After",
                          code="overloaded", retry_after_s=max(recovery_s, 1.0))
    if last is None:
        return UpstreamFailed("no upstream can serve this model (every key was rejected)",
                              code="upstream_unavailable")
    if last.error_class is ErrorClass.TIMEOUT:
        return UpstreamTimeout(last.message)
    if _overloaded(last):
        # The upstream said it is overloaded (Anthropic 529, a 503): say so honestly, so
        # SDKs back off and retry, rather than reporting a broken gateway. Retry-After:
        # the later of the upstream's own and the earliest recovery of any candidate.
        waits = [w for w in (last.retry_after_s, recovery_s) if w is not None]
        return Overloaded(last.message, code="overloaded",
                          retry_after_s=max(waits) if waits else None)
    return UpstreamFailed(last.message)


def _overloaded(outcome: Outcome) -> bool:
    if outcome.status in _OVERLOADED_STATUSES:
        return True
    return outcome.info is not None and outcome.info.type == "overloaded_error"


def without_secret(text: str, secret: str) -> str:
    """`text` with the upstream key the attempt sent masked, whatever its shape (an Azure
    key is 32 hex digits, which `scrub` cannot recognise). Very short values are left
    alone: masking them would garble ordinary words and they are not real keys."""
    if len(secret) < _MIN_MASKED_SECRET or secret not in text:
        return text
    return text.replace(secret, "***")


def outcome_without_secret(outcome: Outcome, secret: str) -> Outcome:
    """`outcome` with the key the attempt sent masked in its message and in every field of
    the upstream's error (type, code and param are passed on to the client too)."""
    message = without_secret(outcome.message, secret)
    info = outcome.info and scrub_info(outcome.info, secret)
    if message == outcome.message and info == outcome.info:
        return outcome
    return dataclasses.replace(outcome, message=message, info=info)


def scrub_info(info: UpstreamErrorInfo, secret: str = "") -> UpstreamErrorInfo:
    """Every text field of an upstream error made safe to show (see `scrub`), with
    `secret`, the key the attempt sent, masked as well."""
    def clean(text: str) -> str:
        return without_secret(scrub(text), secret)

    return dataclasses.replace(
        info, type=clean(info.type), message=clean(info.message),
        code=None if info.code is None else clean(info.code),
        param=None if info.param is None else clean(info.param))


def scrub_error(error: GatewayError, secret: str) -> None:
    """An upstream's error event made safe to relay: every field a client sees is
    scrubbed, with `secret`, the key the attempt sent, masked as well."""
    info = scrub_info(UpstreamErrorInfo(error.status, error.type, error.message, error.code,
                                        error.param), secret)
    error.message, error.type, error.code, error.param = (info.message, info.type, info.code,
                                                          info.param)


def scrub(text: str) -> str:
    """An upstream's message made safe to show: key-shaped strings masked, length capped."""
    return _SECRET_SHAPES.sub("***", text)[:_MESSAGE_LIMIT]
