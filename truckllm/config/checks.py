"""Checks that span sections of a shape-valid Config: references and uniqueness.

Returns (path, message) pairs; the loader attaches file positions.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator

from truckllm.config.schema import Config, split_host_port

PathTuple = tuple[str | int, ...]
Problem = tuple[PathTuple, str]
_SHA256_FORM = re.compile(r"sha256:[0-9a-fA-F]{64}")


# Keys and header values travel in HTTP headers and are hashed as UTF-8: no control
# characters (a line break would split a header) and no lone surrogates.
_NOT_HEADER_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_NOT_HEADER_TEXT_MESSAGE = "must be text without line breaks or control characters"


def cross_check(config: Config) -> list[Problem]:
    unsafe = list(_header_text(config))
    if unsafe:
        return unsafe           # the checks below hash these values
    return [*_providers(config), *_models(config), *_client_keys(config), *_admin(config)]


def _header_text(config: Config) -> Iterator[Problem]:
    """Never echoes the value: most of these are secrets."""
    admin = config.server.admin_api_key
    if admin is not None and _NOT_HEADER_TEXT.search(admin.get_secret_value()):
        yield ("server", "admin_api_key"), _NOT_HEADER_TEXT_MESSAGE
    for i, provider in enumerate(config.providers):
        for j, key in enumerate(provider.keys):
            if _NOT_HEADER_TEXT.search(key.value.get_secret_value()):
                yield ("providers", i, "keys", j, "value"), _NOT_HEADER_TEXT_MESSAGE
        for name, value in provider.headers.items():
            if _NOT_HEADER_TEXT.search(name) or _NOT_HEADER_TEXT.search(value):
                yield ("providers", i, "headers", name), _NOT_HEADER_TEXT_MESSAGE
    for i, client in enumerate(config.keys or []):
        if _NOT_HEADER_TEXT.search(client.key.get_secret_value()):
            yield ("keys", i, "key"), _NOT_HEADER_TEXT_MESSAGE


def _providers(config: Config) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, provider in enumerate(config.providers):
        if provider.id in seen:
            yield ("providers", i, "id"), f"duplicate provider id {provider.id!r}"
        seen.add(provider.id)
        key_ids: set[str] = set()
        for j, key in enumerate(provider.keys):
            if key.id in key_ids:
                yield ("providers", i, "keys", j, "id"), f"duplicate key id {key.id!r}"
            key_ids.add(key.id)


def _models(config: Config) -> Iterator[Problem]:
    provider_ids = {p.id for p in config.providers}
    aliases: set[str] = set()
    yield from _context_fallbacks(config)
    for i, model in enumerate(config.models):
        if model.alias in aliases:
            yield ("models", i, "alias"), f"duplicate alias {model.alias!r}"
        aliases.add(model.alias)
        wildcard = model.alias.endswith("*")
        if "*" in model.alias[:-1] or (wildcard and model.alias != "*" and not model.alias.endswith("/*")):
            yield ("models", i, "alias"), "a wildcard alias must end in '/*' (or be '*')"
        for j, target in enumerate(model.targets):
            if target.provider not in provider_ids:
                yield ("models", i, "targets", j, "provider"), f"unknown provider {target.provider!r}"
            if "*" in target.model and not wildcard:
                yield ("models", i, "targets", j, "model"), "'*' is only allowed in the targets of a wildcard alias"


def _context_fallbacks(config: Config) -> Iterator[Problem]:
    aliases = {model.alias for model in config.models}
    for i, model in enumerate(config.models):
        fallback = model.fallback_on_context_overflow
        if fallback is None:
            continue
        if fallback == model.alias:
            yield ("models", i, "fallback_on_context_overflow"), "an alias cannot be its own context-overflow fallback"
        elif fallback not in aliases:
            yield ("models", i, "fallback_on_context_overflow"), f"unknown alias {fallback!r}"


def _client_keys(config: Config) -> Iterator[Problem]:
    ids: set[str] = set()
    secrets: set[str] = set()
    for i, key in enumerate(config.keys or []):
        if key.id in ids:
            yield ("keys", i, "id"), f"duplicate client key id {key.id!r}"
        ids.add(key.id)
        secret = key.key.get_secret_value()
        if not secret:
            yield ("keys", i, "key"), "empty key"
        elif secret.startswith("sha256:") and not _SHA256_FORM.fullmatch(secret):
            yield ("keys", i, "key"), "a sha256: key must be 'sha256:' followed by 64 hex digits"
        elif secret in secrets:
            yield ("keys", i, "key"), "the same key is used twice"   # never echo the key
        secrets.add(secret)
        if key.budget_period is not None and key.budget_usd is None:
            yield ("keys", i, "budget_period"), "budget_period needs budget_usd"


def _admin(config: Config) -> Iterator[Problem]:
    server = config.server
    admin = server.admin_api_key.get_secret_value() if server.admin_api_key else ""
    if admin and any(_same_key(admin, key.key.get_secret_value()) for key in config.keys or []):
        yield ("server", "admin_api_key"), "the admin key must differ from every client key"
    if admin.startswith("sha256:"):
        yield ("server", "admin_api_key"), "give the admin key itself, not its sha256: form"
    if server.admin_listen is not None:
        host, port = split_host_port(server.admin_listen)
        wildcards = {"0.0.0.0", "::"}
        overlapping = host == server.host or host in wildcards or server.host in wildcards
        if port == server.port and overlapping:
            yield ("server", "admin_listen"), "must differ from server.host:server.port"


def _same_key(admin: str, client: str) -> bool:
    if client.startswith("sha256:"):
        client_digest = client.removeprefix("sha256:").lower()
        return hmac.compare_digest(hashlib.sha256(admin.encode()).hexdigest(), client_digest)
    return hmac.compare_digest(admin.encode(), client.encode())
