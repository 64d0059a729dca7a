"""The one exception tree for failures a client can see, and its OpenAI-shaped rendering.

    GatewayError                      (status, type, code, param, message)
    ├── InvalidRequest                400 invalid_request_error
    │   ├── PayloadTooLarge           413 invalid_request_error
    │   ├── MethodNotAllowed          405 invalid_request_error
    │   ├── RequestTimeout            408 invalid_request_error  (the body came too slowly)
    │   └── HeadersTooLarge           431 invalid_request_error
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error
    ├── NotFound                      404 not_found_error
    ├── RateLimited                   429 rate_limit_error   (Retry-After)
    ├── UpstreamStatus                the upstream's own 4xx, reshaped
    ├── UpstreamFailed                502 upstream_error
    ├── Overloaded                    503 overloaded_error   (Retry-After)
    └── UpstreamTimeout               504 timeout_error

Nothing here imports from the rest of the package. Messages never carry secrets.
"""

from __future__ import annotations

import math
from typing import Any

import orjson


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "request_header_fields_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class Conflict(GatewayError):
    """The request clashes with what exists (e.g. a client key id already in use)."""

    status = 409
    type = "invalid_request_error"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamStatus(GatewayError):
    """A non-retryable client error from upstream, returned with its own status and code."""

    def __init__(self, status: int, message: str, *, type: str, code: str | None = None,
                 param: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, param=param, code=code, retry_after_s=retry_after_s)
        self.status = status
        self.type = type


class UpstreamFailed(GatewayError):
    status = 502
    type = "upstream_error"


class Overloaded(GatewayError):
    status = 503
    type = "overloaded_error"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
