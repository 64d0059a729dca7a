"""Budget periods: calendar periods in UTC (weeks start on Monday) or one endless period.

Pure date arithmetic; no clock of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(period: BudgetPeriod, now: datetime) -> datetime:
    """The start of the period `now` falls in (EPOCH for `total`, which never resets)."""
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return midnight
    if period == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    if period == "monthly":
        return midnight.replace(day=1)
    return EPOCH


def period_end(period: BudgetPeriod, start: datetime) -> datetime | None:
    """When the period that began at `start` ends and counters reset; None for `total`."""
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    if period == "monthly":
        if start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)
    return None
