"""The provider registry: every provider type TruckLLM speaks, by config `type`.

Providers that speak chat also answer the Anthropic Messages API (`messages`) and the
OpenAI Responses API (`responses`), translated through chat unless they speak it natively
(truckllm.protocols.messages_inbound, truckllm.protocols.responses.inbound).
"""

from __future__ import annotations

from truckllm.protocols.messages_inbound import with_messages_inbound
from truckllm.protocols.responses.inbound import with_responses_inbound
from truckllm.protocols.responses.native import NativeEndpoint
from truckllm.providers import anthropic, azure, gemini, mock, openai
from truckllm.providers.base import ProviderSpec

# Provider types with a Responses API endpoint of their own: spoken natively unless a
# provider says `responses: chat`.
_NATIVE_RESPONSES: dict[str, NativeEndpoint] = {
    "openai": openai.responses_endpoint,
    "azure": azure.responses_endpoint,
}

NATIVE_TYPES = frozenset(_NATIVE_RESPONSES)

REGISTRY: dict[str, ProviderSpec] = {
    spec.type: with_responses_inbound(with_messages_inbound(spec), _NATIVE_RESPONSES.get(spec.type))
    for spec in (openai.SPEC, mock.SPEC, anthropic.SPEC, gemini.SPEC, azure.SPEC)
}
