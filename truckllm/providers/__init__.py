"""The provider registry: every provider type TruckLLM speaks, by config `type`."""

from __future__ import annotations

from truckllm.providers import mock, openai
from truckllm.providers.base import ProviderSpec

REGISTRY: dict[str, ProviderSpec] = {
    openai.SPEC.type: openai.SPEC,
    mock.SPEC.type: mock.SPEC,
}
