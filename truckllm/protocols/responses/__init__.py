"""The OpenAI Responses API (`POST /v1/responses`) spoken to clients on top of any provider
that speaks chat: request translation (request), the response object (answer), the event
stream (events), the composition with a provider's chat functions (inbound), and the
pass-through to upstreams that speak it (native)."""
