"""The state file: atomic writes, round trips, missing and corrupt files, the saver task."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from truckllm.config.files import write_atomic
from truckllm.limits import (
    BudgetExceeded,
    KeyPolicy,
    Limiter,
    LimitsPolicy,
    ManualClock,
    RateLimits,
    StateSaver,
    load_state,
    state_file_path,
)
from truckllm.limits.budget import period_start
from truckllm.limits.persist import encode_state
from truckllm.usage import Usage

POLICY = LimitsPolicy(
    keys={"a": KeyPolicy("a", RateLimits(rpm=5), budget_usd=1.0, budget_period="monthly")},
    upstream={"openai/main": RateLimits(rpm=100)},
)


async def make_spending_limiter(spend: float) -> Limiter:
    limiter = Limiter(ManualClock())
    admission = await limiter.admit(POLICY, "a", 10)
    await admission.settle(Usage(prompt_tokens=10, completion_tokens=5), spend)
    await admission.release()
    await (await limiter.upstream_acquire(POLICY, "openai/main", 10)).settle(Usage(10, 5), spend)
    return limiter


def test_state_file_defaults_beside_the_config() -> None:
    assert state_file_path("/etc/truck/config.yaml", None) == Path("/etc/truck/config.state.json")
    assert state_file_path("/etc/truck/config.yaml", "run/s.json") == Path("/etc/truck/run/s.json")
    assert state_file_path("/etc/truck/config.yaml", "/var/s.json") == Path("/var/s.json")


def test_the_state_file_goes_in_the_state_directory_systemd_gives() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/truckllm:/var/lib/other"}
    config = "/etc/truckllm/config.yaml"
    assert state_file_path(config, None, env) == Path("/var/lib/truckllm/config.state.json")
    assert state_file_path(config, "s.json", env) == Path("/var/lib/truckllm/s.json")
    assert state_file_path(config, "/srv/s.json", env) == Path("/srv/s.json")
    assert state_file_path(config, None, {}) == Path("/etc/truckllm/config.state.json")


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.state.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.state.json"]
    assert target.stat().st_mode & 0o777 == 0o600


async def test_spend_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_atomic(path, encode_state(await make_spending_limiter(1.5)))
    saved = orjson.loads(path.read_bytes())
    assert saved["version"] == 1 and "saved_at" in saved
    restarted = Limiter(ManualClock())
    assert await load_state(restarted, path) is True
    with pytest.raises(BudgetExceeded):
        await restarted.admit(POLICY, "a", 10)
    report = await restarted.key_report(POLICY, "a")
    assert report["spend_usd"] == 1.5 and report["tokens"] == 15 and report["requests"] == 1
    assert restarted.upstream.key("openai/main").usage.spend_usd == 1.5


async def test_a_saved_period_that_has_ended_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_atomic(path, encode_state(await make_spending_limiter(1.5)))
    clock = ManualClock()
    clock.advance(40 * 24 * 3600)                    # next month
    restarted = Limiter(clock)
    await load_state(restarted, path)
    await (await restarted.admit(POLICY, "a", 10)).release()
    report = await restarted.key_report(POLICY, "a")
    assert report["spend_usd"] == 0.0 and report["lifetime"]["spend_usd"] == 1.5
    assert report["period_start"] == period_start("monthly", clock.now()).isoformat().replace("+00:00", "Z")


async def test_missing_file_is_a_fresh_start_with_a_warning(tmp_path: Path) -> None:
    limiter = Limiter(ManualClock())
    with capture_logs() as logs:
        assert await load_state(limiter, tmp_path / "absent.json") is False
    assert [(e["event"], e["log_level"]) for e in logs] == [("state_file_missing", "warning")]
    assert limiter.snapshot() == {"client_keys": {}, "upstream_keys": {}}


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b'{"version": 99}',
    b'{"version": 1, "client_keys": {"a": {"period_start": "yesterday"}}}',
    b'{"version": 1, "client_keys": {"a": {"period_start": "2026-01-01T00:00:00+00:00",'
    b' "period": {"spend_usd": -4}}}}',
    b'{"version": 1, "upstream_keys": {"p/k": {"requests": "many"}}}',
])
async def test_corrupt_file_is_moved_aside_and_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    limiter = Limiter(ManualClock())
    with capture_logs() as logs:
        assert await load_state(limiter, path) is False
    assert [(e["event"], e["log_level"]) for e in logs] == [("state_file_corrupt", "warning")]
    assert limiter.snapshot() == {"client_keys": {}, "upstream_keys": {}}
    assert not path.exists()
    assert (tmp_path / "s.json.corrupt").read_bytes() == content
    await (await limiter.admit(POLICY, "a", 1)).release()              # and it serves


async def test_saver_loads_saves_periodically_only_on_change_and_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_atomic(path, encode_state(await make_spending_limiter(0.25)))
    limiter = Limiter(ManualClock())
    async with StateSaver(limiter, path, interval_s=0.01) as saver:
        assert (await limiter.key_report(POLICY, "a"))["spend_usd"] == 0.25
        assert await saver.save() is False                # nothing changed since the load
        await (await limiter.admit(POLICY, "a", 1)).settle(Usage(1, 1), 0.5)
        for _ in range(200):                              # bounded: at most 2 s
            if orjson.loads(path.read_bytes())["client_keys"]["a"]["period"]["spend_usd"] == 0.75:
                break
            await asyncio.sleep(0.01)
        saved = orjson.loads(path.read_bytes())
        assert saved["client_keys"]["a"]["period"]["spend_usd"] == 0.75
        await (await limiter.admit(POLICY, "a", 1)).settle(Usage(1, 1), 0.125)
        saver.interval_s = 3600.0
    final = orjson.loads(path.read_bytes())
    assert final["client_keys"]["a"]["period"]["spend_usd"] == 0.875


def test_write_atomic_creates_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "s.json"
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"


async def test_saver_survives_an_unwritable_location(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    path = tmp_path / "a-file" / "s.json"          # a directory that can never exist
    limiter = Limiter(ManualClock())
    with capture_logs() as logs:
        async with StateSaver(limiter, path, interval_s=3600) as saver:
            await (await limiter.admit(POLICY, "a", 1)).settle(Usage(), 0.1)
            assert await saver.save() is False
    assert not path.exists()
    assert "state_file_write_failed" in [e["event"] for e in logs]
