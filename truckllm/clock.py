"""The one clock of runtime state: monotonic seconds for rate windows, cooldowns and
breakers; UTC wall time for budgets and for showing when a cooldown ends.

Injectable so tests can move time without sleeping. No I/O, no imports from the package.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (rate windows, concurrency)."""
        ...

    def now(self) -> datetime:
        """The current UTC time (budget periods, reset times, the state file)."""
        ...

    def wall(self) -> float:
        """Unix seconds now: `now()` as a number, for times shown to users."""
        ...


class SystemClock:
    """The real clocks of the process."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wall(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to: for tests and simulations, never for serving."""

    def __init__(self, start: datetime | None = None) -> None:
        self._monotonic = 1000.0
        self._now = start or datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

    def monotonic(self) -> float:
        return self._monotonic

    def now(self) -> datetime:
        return self._now

    def wall(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._now += timedelta(seconds=seconds)
