"""Provider adapters: one module per provider type (truckllm.providers.registry lists them),
the types they share (base) and the translation helpers several use (shared/)."""
