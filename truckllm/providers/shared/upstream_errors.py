"""Upstream errors reduced to SPEC §5 terms, shared by the translating adapters.

Pure. Imports only base and errors. `to_gateway_error` is how a translator raises an error
event met mid-stream (the server turns it into an SSE error event and `[DONE]`).
"""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.errors import (
    GatewayError,
    Overloaded,
    RateLimited,
    UpstreamFailed,
    UpstreamStatus,
    UpstreamTimeout,
)
from truckllm.providers.base import UpstreamErrorInfo

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


# What a translator raises on an upstream body of the wrong shape (a string where an object
# belongs, say). Callers turn it into an upstream failure: a 502 or an SSE error event,
# never a 500 or a stream left hanging.
WRONG_SHAPE = (AttributeError, TypeError, ValueError, KeyError, IndexError)


def wrong_shape(what: str) -> UpstreamFailed:
    return UpstreamFailed(f"upstream sent {what} of a shape TruckLLM cannot read")


def error_type_for_status(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "upstream_error" if status >= 500 else "invalid_request_error"


def decode_json(body: bytes) -> Any:
    """The JSON value of a body, or None when it is not JSON (an HTML error page, say)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def error_object(body: bytes) -> dict[str, Any] | None:
    """The `error` object of an upstream error body (`{"error": {...}}`, also wrapped in a
    one-element array as Gemini sometimes sends it); None when the body has none."""
    data = decode_json(body)
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def context_overflow_code(message: str) -> str | None:
    lowered = message.lower()
    if "prompt is too long" in lowered or "context length" in lowered or "too many tokens" in lowered:
        return "context_length_exceeded"
    return None


def fallback_message(status: int, body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return f"upstream answered {status}" + (f": {text}" if text else "")


def to_gateway_error(info: UpstreamErrorInfo) -> GatewayError:
    """The client-facing exception for an upstream error (used for mid-stream errors)."""
    message = f"upstream error: {info.message}"
    if info.status == 429:
        return RateLimited(message, retry_after_s=info.retry_after_s)
    if info.status == 503:
        return Overloaded(message, code=info.code, retry_after_s=info.retry_after_s)
    if info.status == 504:
        return UpstreamTimeout(message)
    if info.status >= 500:
        return UpstreamFailed(message, code=info.code)
    return UpstreamStatus(info.status, message, type=info.type, code=info.code, param=info.param)
