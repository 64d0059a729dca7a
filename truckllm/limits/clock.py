"""The clock the limits read: monotonic seconds for rate windows, UTC wall time for budgets.

Injectable so tests can move time without sleeping. No I/O, no imports from the package.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (rate windows, concurrency)."""
        ...

    def now(self) -> datetime:
        """The current UTC time (budget periods, reset times, the state file)."""
        ...


class SystemClock:
    """The real clocks of the process."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)
