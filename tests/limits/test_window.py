"""The sliding-log window and the header formatting: pure, driven by explicit times."""

from __future__ import annotations

import pytest

from truckllm.limits.headers import LimitState, format_ratelimit_headers, format_reset
from truckllm.limits.window import SlidingWindow


def test_window_counts_exactly_what_was_added_in_the_last_span() -> None:
    window = SlidingWindow(60.0)
    window.add(1, now=0.0)
    window.add(1, now=30.0)
    assert window.used(59.9) == 2
    assert window.used(60.0) == 1        # the first entry leaves exactly 60 s after it came
    assert window.used(90.0) == 0


def test_limit_is_never_exceeded_in_any_window() -> None:
    window = SlidingWindow(60.0)
    admitted: list[float] = []
    for tick in range(0, 600):           # a request every 0.5 s for 5 minutes, limit 7
        now = tick * 0.5
        if window.fits(1, 7, now):
            window.add(1, now)
            admitted.append(now)
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 60.0) <= 7
    assert len(admitted) == 7 * 5        # and every window is used to the full


def test_wait_is_until_enough_old_entries_leave() -> None:
    window = SlidingWindow(60.0)
    window.add(300, now=0.0)
    window.add(500, now=10.0)
    assert window.wait_s(200, 1000, now=20.0) == 0.0
    assert window.wait_s(400, 1000, now=20.0) == pytest.approx(40.0)   # the 300 at t=0 leaves at 60
    assert window.wait_s(900, 1000, now=20.0) == pytest.approx(50.0)   # both must leave
    assert window.wait_s(1001, 1000, now=20.0) == float("inf")


def test_reconcile_corrects_a_live_entry_in_place() -> None:
    window = SlidingWindow(60.0)
    entry = window.add(100, now=0.0)
    window.reconcile(entry, 250, now=5.0)
    assert window.used(5.0) == 250
    window.reconcile(entry, 40, now=6.0)
    assert window.used(6.0) == 40
    assert window.used(60.0) == 0


def test_reconcile_of_an_expired_entry_charges_only_the_undercount_now() -> None:
    window = SlidingWindow(60.0)
    entry = window.add(100, now=0.0)
    window.reconcile(entry, 130, now=70.0)       # a stream that outlived the window
    assert window.used(70.0) == 30
    over = window.add(100, now=200.0)
    window.reconcile(over, 10, now=300.0)        # over-estimated and expired: nothing to undo
    assert window.used(300.0) == 0               # the 30 charged at t=70 left at t=130


def test_clear_detaches_entries_so_later_reconciles_change_nothing() -> None:
    window = SlidingWindow(60.0)
    entry = window.add(100, now=0.0)
    window.clear()
    window.reconcile(entry, 90, now=1.0)
    assert window.used(1.0) == 0


def test_reset_in_is_until_the_newest_entry_leaves() -> None:
    window = SlidingWindow(60.0)
    assert window.reset_in(0.0) == 0.0
    window.add(1, now=0.0)
    window.add(1, now=15.0)
    assert window.reset_in(20.0) == pytest.approx(55.0)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0001, "1ms"), (0.012, "12ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"),
    (59.25, "59.25s"), (60, "1m0s"), (360, "6m0s"), (90.5, "1m30.5s"), (3600, "1h0m0s"),
    (3723, "1h2m3s"), (-3, "0s"),
])
def test_reset_is_formatted_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_ratelimit_headers_only_for_limits_that_exist() -> None:
    assert format_ratelimit_headers(None, None) == {}
    assert format_ratelimit_headers(LimitState(3, 2, 60.0), None) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1m0s",
    }
    tokens = format_ratelimit_headers(None, LimitState(1000, 750, 0.5))
    assert tokens["x-ratelimit-remaining-tokens"] == "750"
    assert tokens["x-ratelimit-reset-tokens"] == "500ms"
