"""Budget periods: calendar boundaries in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from truckllm.limits.budget import EPOCH, period_end, period_start

WED = datetime(2026, 12, 30, 17, 45, 12, tzinfo=UTC)


@pytest.mark.parametrize(("period", "start", "end"), [
    ("daily", datetime(2026, 12, 30, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC)),
    ("weekly", datetime(2026, 12, 28, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC)),
    ("monthly", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ("total", EPOCH, None),
])
def test_periods_are_calendar_periods(period: str, start: datetime, end: datetime | None) -> None:
    assert period_start(period, WED) == start  # type: ignore[arg-type]
    assert period_end(period, start) == end  # type: ignore[arg-type]


def test_other_time_zones_are_read_as_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    moment = datetime(2026, 3, 2, 8, 0, tzinfo=tokyo)       # still 1 March in UTC
    assert period_start("daily", moment) == datetime(2026, 3, 1, tzinfo=UTC)
    assert period_start("monthly", moment) == datetime(2026, 3, 1, tzinfo=UTC)


def test_a_week_starts_on_monday_even_on_monday() -> None:
    monday = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
    assert period_start("weekly", monday) == monday
    assert period_start("weekly", monday - timedelta(seconds=1)) == datetime(2025, 12, 29, tzinfo=UTC)
