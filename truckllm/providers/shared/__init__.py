"""Pieces shared by the provider adapters: the OpenAI chat request and answer shapes,
tool ids, media pass-through, upstream error mapping."""
