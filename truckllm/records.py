"""The per-request outcome record that metrics, the access log and the admin log consume.

A plain frozen value: built once by the server when a request ends. Carries ids and
aliases from the config and counts only; never a prompt, a completion or a secret.
Imports nothing from the package except Usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from truckllm.usage import Usage

Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    timestamp: float                # unix seconds when the request arrived
    request_id: str
    key_id: str | None              # client key id; None when the API is open
    alias: str | None               # the model the client asked for; None before it is known
    provider_id: str | None         # provider of the last attempt; None when none was made
    upstream_model: str | None
    status: int                     # HTTP status sent to the client (499: client left)
    latency_s: float                # arrival to last byte sent
    overhead_s: float               # time spent in TruckLLM itself, upstream excluded
    ttft_s: float | None            # streams: arrival to first chunk sent
    usage: Usage | None
    attempts: int
    cost_usd: float
    error_reason: str | None        # short machine word ("timeout", "rate_limited", ...)
    level: Level = "info"

    @property
    def total_tokens(self) -> int:
        return self.usage.total_tokens if self.usage else 0


def level_for_status(status: int) -> Level:
    """The log level a request of this status deserves: 5xx error, 4xx warning."""
    if status >= 500:
        return "error"
    if status >= 400:
        return "warning"
    return "info"
