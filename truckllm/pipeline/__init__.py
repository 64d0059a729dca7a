"""One request's way upstream and back: dispatch, router, retry policy, health, stream relay,
transport, and the request record."""
