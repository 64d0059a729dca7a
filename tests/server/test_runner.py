"""The serving process's own settings: the collector after start-up."""

from __future__ import annotations

import gc

from truckllm.server.runner import GC_GEN0_THRESHOLD, tune_gc


def test_the_collector_is_on_once_serving_and_collects_young_objects_less_often() -> None:
    thresholds = gc.get_threshold()
    gc.disable()                    # as `truckllm serve` starts
    try:
        tune_gc()
        assert gc.isenabled()
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    finally:
        gc.enable()
        gc.set_threshold(*thresholds)
