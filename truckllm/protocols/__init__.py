"""The inbound API dialects that are not the OpenAI chat pivot: Anthropic Messages
(anthropic_messages), and the composition that serves any such dialect through a
provider's chat operation (through_chat)."""
