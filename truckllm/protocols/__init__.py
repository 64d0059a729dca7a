"""The inbound API dialects that are not the OpenAI chat pivot: Anthropic Messages."""
