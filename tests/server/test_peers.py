"""Merging the workers' admin answers (`--workers`) into one in the one-process shape;
the end-to-end behaviour is in tests/e2e/test_workers.py."""

from __future__ import annotations

from typing import Any

from truckllm.server.peers import merge_history, merge_key_reports, merge_logs, merge_providers


def upstream_key(key_id: str, requests: int, status: str = "healthy",
                 cooldown_until: str | None = None, last_error: str | None = None) -> dict[str, Any]:
    return {"id": key_id, "usage_req": requests, "usage_tokens": 10 * requests,
            "errors": 1 if last_error else 0, "last_error": last_error,
            "spend_usd": 0.5 * requests,
            "lifetime": {"requests": requests, "tokens": 10 * requests, "spend_usd": 0.5 * requests},
            "status": status, "cooldown_until": cooldown_until}


def test_providers_add_up_traffic_and_show_the_worst_health_and_latest_cooldown() -> None:
    one = {"providers": [{"id": "p", "type": "openai", "status": "degraded", "keys": [
        upstream_key("a", 3, "down", "2026-01-01T00:00:05.000Z", "rate_limited"),
        upstream_key("b", 1)]}]}
    two = {"providers": [{"id": "p", "type": "openai", "status": "down", "keys": [
        upstream_key("a", 2, "degraded", "2026-01-01T00:00:09.000Z"),
        upstream_key("b", 4, "healthy"),
        upstream_key("c", 1, "down", None, "auth")]}]}
    (merged,) = merge_providers([one, two])["providers"]
    assert merged["status"] == "down"
    a, b, c = merged["keys"]
    assert (a["usage_req"], a["usage_tokens"], a["errors"], a["spend_usd"]) == (5, 50, 1, 2.5)
    assert a["lifetime"] == {"requests": 5, "tokens": 50, "spend_usd": 2.5}
    assert (a["status"], a["cooldown_until"], a["last_error"]) == \
        ("down", "2026-01-01T00:00:09.000Z", "rate_limited")
    assert (b["usage_req"], b["status"], b["cooldown_until"]) == (5, "healthy", None)
    assert (c["id"], c["status"]) == ("c", "down")
    assert one["providers"][0]["keys"][0]["usage_req"] == 3       # the parts are not changed


def test_logs_are_merged_newest_first_and_the_limit_applies_after() -> None:
    def entry(second: int) -> dict[str, Any]:
        return {"timestamp": f"2026-01-01T00:00:{second:02d}.000Z", "request_id": str(second)}
    merged = merge_logs([{"logs": [entry(9), entry(4), entry(1)]},
                         {"logs": [entry(8), entry(7), entry(2)]}], 4)
    assert [e["request_id"] for e in merged["logs"]] == ["9", "8", "7", "4"]


def history(now: int, rows: list[tuple[int, int, float, float]]) -> dict[str, Any]:
    return {"now": now, "interval_s": 1, "window_s": 3600, "series": {
        "t": [r[0] for r in rows], "requests": [r[1] for r in rows],
        "errors": [1 for _ in rows], "client_errors": [0 for _ in rows],
        "p50_ms": [r[2] for r in rows], "p95_ms": [r[3] for r in rows],
        "tokens": [10 * r[1] for r in rows], "cost_usd": [0.25 for _ in rows]}}


def test_history_adds_up_each_second_and_weighs_quantiles_by_requests() -> None:
    merged = merge_history([history(100, [(98, 3, 10.0, 20.0), (99, 1, 5.0, 5.0)]),
                            history(101, [(99, 3, 1.0, 9.0), (101, 2, 4.0, 8.0)])])
    assert merged["now"] == 101 and merged["window_s"] == 3600
    series = merged["series"]
    assert series["t"] == [98, 99, 101]
    assert series["requests"] == [3, 4, 2] and series["tokens"] == [30, 40, 20]
    assert series["errors"] == [1, 2, 1] and series["cost_usd"] == [0.25, 0.5, 0.25]
    assert series["p50_ms"] == [10.0, 2.0, 4.0] and series["p95_ms"] == [20.0, 8.0, 8.0]


def key_report(requests: int, spend: float, in_flight: int) -> dict[str, Any]:
    return {"id": "team", "requests": requests, "tokens": 10 * requests,
            "prompt_tokens": 4 * requests, "completion_tokens": 6 * requests,
            "spend_usd": spend, "budget_usd": 10.0, "budget_left_usd": 10.0 - spend,
            "budget_period": "monthly", "period_start": "2026-01-01T00:00:00Z",
            "period_resets_at": "2026-02-01T00:00:00Z", "limits": {"rpm": 100},
            "current": {"requests_last_minute": requests, "tokens_last_minute": 10 * requests,
                        "in_flight": in_flight},
            "lifetime": {"requests": requests, "tokens": 10 * requests, "spend_usd": spend}}


def test_a_key_adds_up_what_each_worker_counts_alone() -> None:
    merged = merge_key_reports([key_report(2, 4.0, 1), key_report(3, 7.0, 2)],
                               shared_accounts=False, shared_windows=False)
    assert (merged["requests"], merged["tokens"], merged["spend_usd"]) == (5, 50, 11.0)
    assert merged["budget_left_usd"] == 0.0
    assert merged["current"] == {"requests_last_minute": 5, "tokens_last_minute": 50,
                                 "in_flight": 3}
    assert merged["lifetime"] == {"requests": 5, "tokens": 50, "spend_usd": 11.0}
    assert set(merged) == set(key_report(0, 0, 0))


def test_a_key_takes_what_the_state_server_holds_once() -> None:
    merged = merge_key_reports([key_report(5, 4.0, 1), key_report(5, 4.0, 1)],
                               shared_accounts=True, shared_windows=True)
    assert merged == key_report(5, 4.0, 1)
    local_windows = merge_key_reports([key_report(5, 4.0, 1), key_report(5, 4.0, 2)],
                                      shared_accounts=True, shared_windows=False)
    assert local_windows["requests"] == 5 and local_windows["current"]["in_flight"] == 3
