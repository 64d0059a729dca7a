"""The redactor's cheap early exits (numbers first, a substring test before the
credential regex) must not let anything through that the full path would mask."""

from __future__ import annotations

import enum

import pytest

from truckllm.observe.redaction import REDACTED, SecretRedactor


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abcdefgh12345", f"Bearer {REDACTED}"),
        ("bearer abcdefgh12345", f"bearer {REDACTED}"),
        ("Basic dXNlcjpwYXNzd29yZA==", f"Basic {REDACTED}"),
        ("sent Bearer abcdefgh12345 upstream", f"sent Bearer {REDACTED} upstream"),
        ("Bearer short", "Bearer short"),                 # too short to be a credential
        ("no credentials here", "no credentials here"),
        ("key sk-known-secret in text", f"key {REDACTED} in text"),
    ],
)
def test_credential_shapes_are_masked(text: str, expected: str) -> None:
    assert SecretRedactor(["sk-known-secret"]).redact_text(text) == expected


@pytest.mark.parametrize("value", [0, 12, 3.5, True, False, None, Level.HIGH])
def test_plain_scalars_pass_unchanged(value: object) -> None:
    redacted = SecretRedactor(["12"]).redact(value)
    assert redacted == value and type(redacted) is type(value)


def test_an_event_mixing_numbers_and_secrets() -> None:
    redactor = SecretRedactor(["sk-known-secret"])
    event = {"status": 200, "latency_ms": 1.5, "stream": False, "error": None,
             "request_id": "sk-known-secret", "detail": "Bearer abcdefgh12345"}
    assert redactor(None, "info", dict(event)) == {
        "status": 200, "latency_ms": 1.5, "stream": False, "error": None,
        "request_id": REDACTED, "detail": f"Bearer {REDACTED}"}


@pytest.mark.parametrize("name", ["password", "Authorization", "X-API-Key", "api_key"])
@pytest.mark.parametrize("value", [1234, 3.5, None, True, "plain", b"bytes", {"a": 1}])
def test_secret_field_names_are_masked_whatever_the_value(name: str, value: object) -> None:
    assert SecretRedactor()(None, "info", {name: value, "other": 1}) == {name: REDACTED, "other": 1}


def test_one_pass_over_a_lines_texts_masks_what_the_field_by_field_path_masks() -> None:
    redactor = SecretRedactor(["sk-known-secret"])
    event = {"request_id": "r-1", "path": "/v1/sk-known-secret", "method": "POST",
             "detail": "Bearer abcdefgh12345", "status": 200, "key_id": "sk-known-secret"}
    assert redactor(None, "info", dict(event)) == {
        "request_id": "r-1", "path": f"/v1/{REDACTED}", "method": "POST",
        "detail": f"Bearer {REDACTED}", "status": 200,
        "key_id": "sk-known-secret"}             # a trusted field: a config id, never scanned


def test_texts_are_not_matched_across_fields() -> None:
    redactor = SecretRedactor(["sk-known-secret"])
    event = {"a": "sk-kno", "b": "wn-secret", "c": "Bearer", "d": "abcdefgh12345"}
    assert redactor(None, "info", dict(event)) == event


@pytest.mark.parametrize("value", [{"nested": "sk-known-secret"}, ["sk-known-secret"],
                                   b"sk-known-secret"])
def test_the_same_field_names_with_a_structured_value_take_the_full_path(value: object) -> None:
    redactor = SecretRedactor(["sk-known-secret"])
    assert redactor(None, "info", {"request_id": "r-1", "detail": "plain"})["detail"] == "plain"
    out = redactor(None, "info", {"request_id": "r-1", "detail": value})
    assert "sk-known-secret" not in str(out) and REDACTED in str(out)
