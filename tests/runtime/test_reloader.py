"""The reloader survives a config it cannot compile: the attempt fails like an invalid
config (nothing changes, the error is returned and logged without values), and the
SIGHUP worker keeps serving later requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from truckllm.config.loader import LoadedConfig, load_file
from truckllm.runtime.reloader import Reloader
from truckllm.runtime.state import State, StateHolder, build_state

CONFIG = """version: 1
providers: [{id: demo, type: mock}]
models: [{alias: %s, targets: [{provider: demo, model: echo}]}]
"""
SECRET_IN_MESSAGE = "value-of-the-new-config-4242"


async def test_a_compile_bug_is_a_failed_reload_not_a_dead_worker(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % "first")
    loaded = load_file(path, env={})
    holder = StateHolder(build_state(loaded, 1))
    broken = {"on": True}

    def compile_state(config: LoadedConfig, version: int) -> State:
        if broken["on"]:
            raise RuntimeError(SECRET_IN_MESSAGE)
        return build_state(config, version)

    reloader = Reloader[State](path, loaded, holder, compile_state, env={})
    reloader.start()
    try:
        path.write_text(CONFIG % "second")
        result = await reloader.reload("admin")
        assert not result.ok and result.version == 1
        [issue] = result.errors
        assert "RuntimeError" in issue.message and SECRET_IN_MESSAGE not in issue.message
        assert holder.current.config.models[0].alias == "first"

        broken["on"] = False
        reloader.request_reload("sighup")               # the worker is still there
        await asyncio.wait_for(_applied(holder, "second"), 10)
        assert reloader.last_result is not None and reloader.last_result.trigger == "sighup"
    finally:
        await reloader.stop()


async def _applied(holder: StateHolder, alias: str) -> None:
    while holder.current.config.models[0].alias != alias:
        await asyncio.sleep(0.01)
