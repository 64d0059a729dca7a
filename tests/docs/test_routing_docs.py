"""docs/routing.md stays true: its worked example is a valid config, and its reference
table names every routing field."""

from __future__ import annotations

import re
from pathlib import Path

from truckllm.config.loader import load_bytes
from truckllm.config.schema import RoutingConfig

DOC = (Path(__file__).resolve().parents[2] / "docs" / "routing.md").read_text()


def test_the_worked_example_validates() -> None:
    example = DOC.split("## A worked example", 1)[1]
    yaml_text = re.search(r"```yaml\n(.*?)```", example, re.S)
    assert yaml_text is not None
    env = {name: "x" for name in re.findall(r"\$\{([A-Z_]+)\}", yaml_text.group(1))}
    config = load_bytes(("version: 1\n" + yaml_text.group(1)).encode(), "routing.md", env).config
    assert config.models[0].fallback_on_context_overflow == "long-context"


def test_every_routing_field_is_in_the_reference() -> None:
    for name in RoutingConfig.model_fields:
        assert f"`routing.{name}`" in DOC, name
