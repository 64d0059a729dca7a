"""Usage and spend counters of client keys and upstream keys, and their JSON form.

Pure data; the Limiter owns the instances, truckllm.limits.persist saves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from truckllm.limits.budget import BudgetPeriod, period_end
from truckllm.usage import Usage


@dataclass(slots=True)
class Counters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spend_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def clear(self) -> None:
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.spend_usd = 0.0

    def add_usage(self, usage: Usage | None, cost_usd: float) -> None:
        """One answered request's tokens and spend (its count is taken at admission)."""
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
        self.spend_usd += cost_usd

    def add(self, more: Counters) -> None:
        self.requests += more.requests
        self.prompt_tokens += more.prompt_tokens
        self.completion_tokens += more.completion_tokens
        self.spend_usd += more.spend_usd

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "spend_usd": self.spend_usd}

    @classmethod
    def from_dict(cls, data: Any) -> Counters:
        """Raises ValueError for anything but the shape `as_dict` writes."""
        if not isinstance(data, dict):
            raise ValueError("counters must be an object")
        return cls(
            requests=_count(data, "requests"),
            prompt_tokens=_count(data, "prompt_tokens"),
            completion_tokens=_count(data, "completion_tokens"),
            spend_usd=_money(data, "spend_usd"),
        )


@dataclass(slots=True)
class Account:
    """A client key's counters for its current budget period, and since it first appeared.

    Mutated in place (never replaced) so a request in flight across a period change or
    an admin reset settles into the counters that are current when it ends.
    """

    period_start: datetime
    period: Counters = field(default_factory=Counters)
    lifetime: Counters = field(default_factory=Counters)

    def enter(self, start: datetime) -> None:
        """Count into the period beginning at `start` (see truckllm.limits.budget): the
        period counters start from zero when that is not the period they belong to."""
        if start != self.period_start:
            self.period_start = start
            self.period.clear()

    def resets_at(self, kind: BudgetPeriod) -> datetime | None:
        return period_end(kind, self.period_start)

    def as_dict(self) -> dict[str, Any]:
        return {"period_start": self.period_start.isoformat(), "period": self.period.as_dict(),
                "lifetime": self.lifetime.as_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> Account:
        if not isinstance(data, dict) or not isinstance(data.get("period_start"), str):
            raise ValueError("an account must be an object with a period_start")
        start = datetime.fromisoformat(data["period_start"])
        if start.tzinfo is None:
            raise ValueError("period_start must carry a time zone")
        return cls(start, Counters.from_dict(data.get("period")),
                   Counters.from_dict(data.get("lifetime")))


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _money(data: dict[str, Any], name: str) -> float:
    value = data.get(name, 0.0)
    if not isinstance(value, int | float) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number")
    return float(value)
