"""SecretRedactor: the last-line defence that masks secret values and credential-shaped
text anywhere in a log event.

Owns the set of known secrets (replaced, never mutated, when a config is applied) and how
a value is masked. Imports nothing from the rest of the package.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

REDACTED = "***"
_MIN_SECRET_LENGTH = 4      # shorter values would mask ordinary words; keys are longer
_FEW_SECRETS = 16           # up to this many, a substring test per secret beats the regex
_BEARER = re.compile(r"\b(Bearer|Basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
# Words that _BEARER cannot match without: a text holding neither is not searched
_CREDENTIAL_WORDS = ("earer", "Basic")
_PLAIN_SCALARS = frozenset({int, float, bool})
# Fields whose values TruckLLM builds from config ids, aliases and its own words, never
# from what a client or upstream sent, so there is nothing in them to mask. Anything a
# client controls (request id, path, method, a wildcard's upstream model) is scanned.
TRUSTED_FIELDS = frozenset({"timestamp", "level", "key_id", "alias", "provider",
                            "cost_lines", "usage_estimated"})
_SECRET_FIELD_NAMES = frozenset({
    "authorization", "proxy-authorization", "api_key", "api-key", "x-api-key", "apikey",
    "admin_api_key", "password", "secret", "x-goog-api-key", "cookie", "set-cookie",
})


class SecretRedactor:
    """A structlog processor masking known secret values and credential-shaped text.

    The set of secrets is replaced (not mutated) on every applied config, so a line
    logged during a reload sees either the old or the new set, both complete. `version`
    counts those replacements: whoever remembers a verdict of `would_mask` keeps it only
    while the version is the same.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._pattern: re.Pattern[str] | None = None
        self._few: tuple[str, ...] | None = ()
        self._needles: tuple[str, ...] = _CREDENTIAL_WORDS
        self.version = 0
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        usable = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        # One alternation, longest first, so a secret containing another is masked whole.
        self._pattern = re.compile("|".join(map(re.escape, usable))) if usable else None
        # Whether a text holds a secret at all: for a few secrets a substring test each
        # is quicker than the alternation, which is tried at every position of the text.
        self._few = tuple(usable) if len(usable) <= _FEW_SECRETS else None
        self._needles = (*(self._few or ()), *_CREDENTIAL_WORDS)
        self.version += 1

    def has_secret(self, text: str) -> bool:
        few = self._few
        if few is None:
            return self._pattern is not None and self._pattern.search(text) is not None
        return any(secret in text for secret in few)

    def redact_text(self, text: str) -> str:
        if self.has_secret(text):
            text = self._pattern.sub(REDACTED, text) if self._pattern is not None else text
        if "earer" not in text and "Basic" not in text:     # no credential pattern can match
            return text
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)

    def would_mask(self, text: str) -> bool:
        """Whether redact_text would change `text`: the same two patterns, only tested."""
        # Almost every text holds none of the few secrets and neither word a credential
        # pattern needs: plain substring tests say so before any regex runs.
        for needle in self._needles:
            if needle in text:
                return self.has_secret(text) or _BEARER.search(text) is not None
        return self._few is None and self.has_secret(text)

    def redact(self, value: Any) -> Any:
        if value is None or value.__class__ in _PLAIN_SCALARS:
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {k: REDACTED if _is_secret_field(k) else self.redact(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.redact_text(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, bool | int | float):
            return value
        return self.redact_text(str(value))

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        # Runs on every log line. Most lines are flat: numbers, trusted fields and short
        # texts with nothing to mask. Which fields to look at depends only on the field
        # names (remembered per set of names); their texts are scanned in one pass, joined
        # by NUL (which no secret or credential pattern matches across). Only when that
        # pass would mask something, or a field has a secret's name or a structured
        # value, does each value go through redact().
        scanned = _scanned_fields(tuple(event))
        if scanned is None:
            return self.redact_each(event)
        texts: list[str] = []
        for name in scanned:
            value = event[name]
            if value.__class__ is str:
                texts.append(value)
            elif value is not None and value.__class__ not in _PLAIN_SCALARS:
                return self.redact_each(event)
        return self.redact_each(event) if self.would_mask("\0".join(texts)) else event

    def redact_each(self, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Every untrusted field of `event` masked, in place (same keys, so iterating
        while assigning is safe)."""
        for name, value in event.items():
            if name in TRUSTED_FIELDS:
                continue
            if _is_secret_field(name):
                event[name] = REDACTED
            elif value is not None and value.__class__ not in _PLAIN_SCALARS:
                event[name] = self.redact(value)
        return event


@functools.lru_cache(maxsize=256)       # sets of field names come from code: a few dozen
def _scanned_fields(names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The fields of an event with these names that may hold text to mask (not trusted);
    None when one of the names is a secret's, so the whole value is masked."""
    if any(map(_is_secret_field, names)):
        return None
    return tuple(name for name in names if name not in TRUSTED_FIELDS)


@functools.lru_cache(maxsize=1024)      # field names come from code: a small, fixed set
def _is_secret_field(name: object) -> bool:
    return isinstance(name, str) and name.lower() in _SECRET_FIELD_NAMES
