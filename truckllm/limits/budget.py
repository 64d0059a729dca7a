"""Budget periods: calendar periods in UTC (weeks start on Monday) or one endless period.

Date arithmetic and its memo; no clock of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from truckllm.clock import Clock

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


class PeriodStarts:
    """`period_start` of the current period, remembered per kind of period: within a
    period the answer cannot change, so it is not worked out again for every request (and
    a `total` budget, which has one endless period, does not read the clock). A time
    outside the remembered period (the next one, or a clock set back) is worked out
    afresh, exactly as `period_start` would."""

    __slots__ = ("_spans",)

    def __init__(self) -> None:
        self._spans: dict[BudgetPeriod, tuple[datetime, datetime]] = {}

    def current(self, period: BudgetPeriod, clock: Clock) -> datetime:
        if period == "total":
            return EPOCH
        now = clock.now()
        span = self._spans.get(period)
        if span is not None and span[0] <= now < span[1]:
            return span[0]
        start = period_start(period, now)
        end = period_end(period, start)
        if end is not None:
            self._spans[period] = (start, end)
        return start
