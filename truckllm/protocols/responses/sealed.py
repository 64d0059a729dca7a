"""`encrypted_content` of the reasoning items of translated responses (and the `signature`
of the thinking blocks of Messages answers through chat): a provider's reasoning state
(truckllm.providers.shared.reasoning: Anthropic thinking blocks with their signatures,
Gemini thought signatures) sealed so a client can hand it back on the next turn, and the
response store keep it for a follow-up, opened again only if this process sealed it unchanged.

The seal is an HMAC-SHA256. Its key comes from the environment variable TRUCKLLM_SEAL_KEY
(any string; `serve --workers` sets one for all its workers) or, without it, is made when
the process starts; it is never stored or shown. Content sealed under another key (before
a restart without the variable, by another instance) no longer opens, and is then dropped
like any unknown content — the conversation goes on without that reasoning. It protects
integrity, not secrecy: the blocks hold nothing the client was not shown (thinking text,
Anthropic's own encrypted redacted_thinking, Gemini's opaque thought signatures).

Pure apart from reading that variable once, at import. Imports nothing from truckllm.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from typing import Any

import orjson

PREFIX = "tkr1."            # names the format, so a native OpenAI item is told apart
SEAL_KEY_ENV = "TRUCKLLM_SEAL_KEY"
_GIVEN = os.environ.get(SEAL_KEY_ENV)
_SECRET = hashlib.sha256(_GIVEN.encode()).digest() if _GIVEN else secrets.token_bytes(32)
_MAC_BYTES = 32


def seal(state: dict[str, Any]) -> str:
    payload = orjson.dumps(state)
    mac = hmac.new(_SECRET, payload, hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(mac + payload).decode("ascii")


def unseal(content: Any) -> dict[str, Any] | None:
    """The state sealed in `content`, or None for anything this process did not seal."""
    if not isinstance(content, str) or not content.startswith(PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(content[len(PREFIX):].encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(_SECRET, payload, hashlib.sha256).digest()):
        return None
    try:
        state = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return state if isinstance(state, dict) else None
