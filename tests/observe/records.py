"""Request records with chosen values, for the observers' tests."""

from __future__ import annotations

from truckllm.pipeline.record import Exchange, RequestRecord


def record_with(**fields: object) -> RequestRecord:
    """A finished request's record with `fields` set (a name it has not is an error)."""
    record = Exchange("req", "POST", "/v1/chat/completions").finish(200)
    for name, value in fields.items():
        setattr(record, name, value)
    return record
