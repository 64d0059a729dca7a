"""What a reload reports as changed: the response store's location needs a restart."""

from __future__ import annotations

from typing import Any

from truckllm.config.changes import diff_configs
from truckllm.config.schema import Config


def make_config(**responses: Any) -> Config:
    return Config.model_validate({
        "version": 1, "providers": [{"id": "demo", "type": "mock"}],
        "models": [{"alias": "demo", "targets": [{"provider": "demo", "model": "m"}]}],
        "responses": responses})


def test_a_new_response_store_needs_a_restart_and_its_ttl_does_not() -> None:
    old = make_config(store="responses.db", ttl_days=30)
    assert diff_configs(old, make_config(store="memory", ttl_days=30)).needs_restart == ("responses.store",)
    changed = diff_configs(old, make_config(store="responses.db", ttl_days=7))
    assert changed.needs_restart == () and changed.sections == ("responses",)
