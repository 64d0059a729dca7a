"""Checks that span sections of a config: references and uniqueness.

They run on `Parts`, the pieces of the file that passed the schema, so that a file with
a schema error elsewhere still gets its references checked in the same run. Returns
(path, message) pairs; the loader attaches file positions.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from truckllm.config.schema import (
    ClientKeyConfig,
    Config,
    ModelConfig,
    ProviderConfig,
    ServerConfig,
    split_host_port,
)

PathTuple = tuple[str | int, ...]
Problem = tuple[PathTuple, str]
_SHA256_FORM = re.compile(r"sha256:[0-9a-fA-F]{64}")


# Keys and header values travel in HTTP headers and are hashed as UTF-8: no control
# characters (a line break would split a header) and no lone surrogates.
_NOT_HEADER_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_NOT_HEADER_TEXT_MESSAGE = "must be text without line breaks or control characters"


@dataclass(frozen=True, slots=True)
class Parts:
    """The sections and list items that passed the schema, each with its index in the
    file. `provider_ids` and `aliases` hold every one written, valid or not, so that a
    target naming an invalid provider is not also called unknown."""

    server: ServerConfig | None
    providers: list[tuple[int, ProviderConfig]]
    models: list[tuple[int, ModelConfig]]
    keys: list[tuple[int, ClientKeyConfig]]
    provider_ids: frozenset[str]
    aliases: frozenset[str]

    @classmethod
    def of(cls, config: Config) -> Parts:
        return cls(config.server, list(enumerate(config.providers)), list(enumerate(config.models)),
                   list(enumerate(config.keys or [])), frozenset(p.id for p in config.providers),
                   frozenset(m.alias for m in config.models))


def cross_check(parts: Parts | Config) -> list[Problem]:
    if isinstance(parts, Config):
        parts = Parts.of(parts)
    problems = [*_providers(parts), *_models(parts)]
    unsafe = list(_header_text(parts))
    if unsafe:
        return [*problems, *unsafe]       # the checks below hash these values
    return [*problems, *_client_keys(parts), *_admin(parts)]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean `log_format`?)` for a near miss, else nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _header_text(parts: Parts) -> Iterator[Problem]:
    """Never echoes the value: most of these are secrets."""
    admin = parts.server.admin_api_key if parts.server else None
    if admin is not None and _NOT_HEADER_TEXT.search(admin.get_secret_value()):
        yield ("server", "admin_api_key"), _NOT_HEADER_TEXT_MESSAGE
    for i, provider in parts.providers:
        for j, key in enumerate(provider.keys):
            if _NOT_HEADER_TEXT.search(key.value.get_secret_value()):
                yield ("providers", i, "keys", j, "value"), _NOT_HEADER_TEXT_MESSAGE
        for name, value in provider.headers.items():
            if _NOT_HEADER_TEXT.search(name) or _NOT_HEADER_TEXT.search(value):
                yield ("providers", i, "headers", name), _NOT_HEADER_TEXT_MESSAGE
    for i, client in parts.keys:
        if _NOT_HEADER_TEXT.search(client.key.get_secret_value()):
            yield ("keys", i, "key"), _NOT_HEADER_TEXT_MESSAGE


def _providers(parts: Parts) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, provider in parts.providers:
        if provider.id in seen:
            yield ("providers", i, "id"), f"duplicate provider id {provider.id!r}"
        seen.add(provider.id)
        key_ids: set[str] = set()
        for j, key in enumerate(provider.keys):
            if key.id in key_ids:
                yield ("providers", i, "keys", j, "id"), f"duplicate key id {key.id!r}"
            key_ids.add(key.id)


def _models(parts: Parts) -> Iterator[Problem]:
    provider_ids = parts.provider_ids
    aliases: set[str] = set()
    yield from _context_fallbacks(parts)
    for i, model in parts.models:
        if model.alias in aliases:
            yield ("models", i, "alias"), f"duplicate alias {model.alias!r}"
        aliases.add(model.alias)
        wildcard = "*" in model.alias
        if model.alias.count("*") > 1:
            yield ("models", i, "alias"), "a wildcard alias has one '*' (e.g. 'openai/*', 'claude-*', '*-fast')"
        for j, target in enumerate(model.targets):
            if target.provider not in provider_ids:
                yield (("models", i, "targets", j, "provider"), f"unknown provider "
                       f"{target.provider!r}{did_you_mean(target.provider, provider_ids)}")
            if "*" in target.model and not wildcard:
                yield ("models", i, "targets", j, "model"), "'*' is only allowed in the targets of a wildcard alias"


def _context_fallbacks(parts: Parts) -> Iterator[Problem]:
    aliases = parts.aliases
    for i, model in parts.models:
        fallback = model.fallback_on_context_overflow
        if fallback is None:
            continue
        if fallback == model.alias:
            yield ("models", i, "fallback_on_context_overflow"), "an alias cannot be its own context-overflow fallback"
        elif fallback not in aliases:
            yield (("models", i, "fallback_on_context_overflow"),
                   f"unknown alias {fallback!r}{did_you_mean(fallback, aliases)}")


def _client_keys(parts: Parts) -> Iterator[Problem]:
    ids: set[str] = set()
    secrets: set[str] = set()
    for i, key in parts.keys:
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


def _admin(parts: Parts) -> Iterator[Problem]:
    server = parts.server
    if server is None:
        return
    admin = server.admin_api_key.get_secret_value() if server.admin_api_key else ""
    if admin and any(_same_key(admin, key.key.get_secret_value()) for _, key in parts.keys):
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
