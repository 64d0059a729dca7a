"""The provider registry: every provider type TruckLLM speaks, by config `type`.

Each type's operation table is completed here, once, with the inbound dialects it serves
through chat (truckllm.protocols.through_chat): a provider that speaks chat also answers
the Anthropic Messages API, unless it speaks that natively (`anthropic`), and the OpenAI
Responses API, passed through natively where the type has its own endpoint
(NATIVE_RESPONSES). Serving another
client API through chat is one more entry in DIALECTS.

Adding a provider type: a module whose SPEC has its operation table, listed in REGISTRY,
and its config class in config/schema.py (the settings its Target carries). Adding an
endpoint: an Operation member (providers/base.py), its OperationSpec in the tables of the
provider types that serve it (or, for a client API any chat provider can serve, a
ChatDialect in DIALECTS), its route in server/routes.py and its fields in
server/validation.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from truckllm.protocols import anthropic_messages
from truckllm.protocols.responses import inbound as responses
from truckllm.protocols.responses.native import NativeEndpoint
from truckllm.protocols.through_chat import ChatDialect, through_chat
from truckllm.providers import anthropic, azure, gemini, mock, openai
from truckllm.providers.base import Operation, ProviderSpec

# The operations any chat-speaking provider serves by translating through chat.
DIALECTS: Mapping[Operation, ChatDialect] = {
    Operation.MESSAGES: anthropic_messages.DIALECT,
    Operation.RESPONSES: responses.DIALECT,
}
# Provider types with a Responses API endpoint of their own: passed through to it, unless a
# provider says `responses: chat` (or its upstream turns out to have none).
NATIVE_RESPONSES: Mapping[str, NativeEndpoint] = {
    "openai": openai.responses_endpoint,
    "azure": azure.responses_endpoint,
}


def with_dialects(spec: ProviderSpec) -> ProviderSpec:
    """`spec` with every dialect it does not speak natively served through its chat."""
    chat = spec.operations.get(Operation.CHAT)
    if chat is None:
        return spec
    operations = dict(spec.operations)
    for op, dialect in DIALECTS.items():
        operations.setdefault(op, through_chat(chat, dialect))
    native = NATIVE_RESPONSES.get(spec.type)
    if native is not None:
        operations[Operation.RESPONSES] = responses.native_or_translated(
            native, operations[Operation.RESPONSES])
    return replace(spec, operations=MappingProxyType(operations))


REGISTRY: Mapping[str, ProviderSpec] = MappingProxyType({
    spec.type: with_dialects(spec)
    for spec in (openai.SPEC, mock.SPEC, anthropic.SPEC, gemini.SPEC, azure.SPEC)
})
