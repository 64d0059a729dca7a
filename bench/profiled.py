"""Run a module under cProfile until SIGTERM, then write the stats: the child side of
bench.calls. Usage: python -m bench.profiled STATS_FILE MODULE [ARGS...]"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    stats_path, module = sys.argv[1], sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    signal.signal(signal.SIGTERM, _stop)     # TruckLLM replaces it with its own graceful stop
    profile = cProfile.Profile()
    profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        profile.disable()
        profile.dump_stats(stats_path)


if __name__ == "__main__":
    main()
