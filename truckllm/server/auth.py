"""Client key authentication: header -> ClientKey of the current snapshot."""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import hdrs, web

from truckllm.errors import AuthenticationFailed, NotFound, PermissionDenied
from truckllm.runtime.state import ClientKey, State


def presented_key(request: web.Request) -> str | None:
    """`Authorization: Bearer`, then `x-api-key`, then `api-key` (Azure-style SDKs)."""
    headers = request.headers
    return bearer_token(request) or headers.get("x-api-key") or headers.get("api-key") or None


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, if the request has one."""
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if token and scheme.lower() == "bearer":
            return token
    return None


def authenticate(request: web.Request, state: State) -> ClientKey | None:
    """The caller's key; None when the config has no `keys:` (open API)."""
    if state.client_keys is None:
        return None
    # The usual header, "Bearer <a key verified before>", is found without parsing it:
    # `presented_key` would read the same text from it.
    authorization = request.headers.get(hdrs.AUTHORIZATION)   # case-folded once, by aiohttp
    key = None
    if authorization is not None and authorization.startswith("Bearer "):
        key = state.verified_keys.get(authorization[7:])
    if key is None:
        key = _verify(request, state)
    if key.expires_at is not None and key.expired(time.time()):    # most keys never expire
        raise PermissionDenied("This API key has expired.", code="key_expired")
    return key


def _verify(request: web.Request, state: State) -> ClientKey:
    presented = presented_key(request)
    if presented is None:
        raise AuthenticationFailed(
            "Missing API key. Send it as 'Authorization: Bearer <key>'.")
    key = state.authenticate(presented)
    if key is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return key


def require_admin(request: web.Request, state: State) -> None:
    """The admin API: 404 when no admin key is configured, 401 without the right one.
    Digests are compared, so the check takes the same time whatever was sent."""
    secret = state.config.server.admin_api_key
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        raise NotFound(f"Unknown path: {request.method} {request.path}", code="unknown_url")
    presented = bearer_token(request) or ""       # the admin API takes Bearer only
    if not hmac.compare_digest(_digest(presented), _digest(expected)):
        raise AuthenticationFailed(
            "Missing or incorrect admin key. Send 'Authorization: Bearer <server.admin_api_key>'.")


def _digest(text: str) -> bytes:
    # Header bytes that are not UTF-8 reach us surrogate-escaped: hash the bytes as sent.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
