"""An exact sliding-log rate window: what was admitted in the last `span_s` seconds.

Pure data structure, no clock of its own: every call is given `now` (monotonic seconds).

Algorithm (sliding log): each admission appends an entry (time, amount) and adds its
amount to a running total; entries older than `span_s` are dropped from the left as time
passes. So "used" is exactly the sum admitted in the last `span_s` seconds, and a limit
checked as `used + amount <= limit` never lets more than `limit` through in any window of
`span_s` seconds, however the requests are spread. Memory is one entry per admission still
in the window, bounded by the limit itself (an rpm of 3500 keeps at most 3500 entries).
Entries are mutable so a token reservation can be reconciled with real usage later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class WindowEntry:
    at: float
    amount: int
    live: bool = True        # False once it left the window (expired or cleared)


class SlidingWindow:
    __slots__ = ("_entries", "_total", "span_s")

    def __init__(self, span_s: float = 60.0) -> None:
        self.span_s = span_s
        self._entries: deque[WindowEntry] = deque()
        self._total = 0

    def used(self, now: float) -> int:
        """The amount admitted in the last span_s seconds (after reconciliation)."""
        self._expire(now)
        return self._total

    def fits(self, amount: int, limit: int, now: float) -> bool:
        return self.used(now) + amount <= limit

    def add(self, amount: int, now: float) -> WindowEntry:
        self._expire(now)
        entry = WindowEntry(now, amount)
        self._entries.append(entry)
        self._total += amount
        return entry

    def reconcile(self, entry: WindowEntry, amount: int, now: float) -> None:
        """Replace what an entry reserved with the real amount.

        An entry still in the window is corrected in place. One that already left it
        (a stream longer than the window) cannot change the past, so what it under-counted
        is charged now as a new entry; an over-count of an expired entry is simply gone.
        """
        self._expire(now)
        if entry.live:
            self._total += amount - entry.amount
            entry.amount = amount
        elif amount > entry.amount:
            under_counted = amount - entry.amount
            entry.amount = amount
            self.add(under_counted, now)

    def wait_s(self, amount: int, limit: int, now: float) -> float:
        """Seconds until `amount` more fits under `limit`; inf if it never can."""
        self._expire(now)
        if amount > limit:
            return float("inf")
        excess = self._total + amount - limit
        if excess <= 0:
            return 0.0
        for entry in self._entries:
            excess -= entry.amount
            if excess <= 0:
                return max(0.0, entry.at + self.span_s - now)
        return self.span_s      # reconciled amounts went negative; cannot happen with amounts >= 0

    def reset_in(self, now: float) -> float:
        """Seconds until the window is empty again, i.e. back to its full limit."""
        self._expire(now)
        for entry in reversed(self._entries):
            if entry.amount > 0:
                return max(0.0, entry.at + self.span_s - now)
        return 0.0

    def clear(self) -> None:
        for entry in self._entries:
            entry.live = False
        self._entries.clear()
        self._total = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.span_s
        entries = self._entries
        while entries and entries[0].at <= horizon:
            entry = entries.popleft()
            entry.live = False
            self._total -= entry.amount
