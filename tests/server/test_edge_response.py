"""GatewayResponse builds the JSON answer without aiohttp's constructor: it must set the
same attributes to the same values as web.Response does, and put the headers on the wire
in the order clients have always received them."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from truckllm.pipeline.record import Exchange
from truckllm.server.edge import GatewayResponse, gateway_headers


def _answered_exchange() -> Exchange:
    exchange = Exchange("req-1", "POST", "/v1/chat/completions")
    exchange.alias, exchange.provider_id, exchange.upstream_model = "fast", "openai", "gpt-x"
    exchange.attempts = 1
    return exchange


def _attributes(response: web.Response) -> dict[str, Any]:
    attributes = dict(vars(response))
    attributes["_headers"] = list(response.headers.items())
    return attributes


def test_the_same_attributes_as_web_response() -> None:
    exchange = _answered_exchange()
    fast = GatewayResponse(b'{"id": 1}', exchange)
    headers = gateway_headers(exchange)
    # The overhead is measured at each call; everything else must match exactly.
    headers["x-truckllm-overhead-ms"] = fast.headers["x-truckllm-overhead-ms"]
    slow = web.Response(body=b'{"id": 1}', content_type="application/json", headers=headers)
    assert _attributes(fast) == _attributes(slow)
    assert type(fast).__mro__[1:] == type(slow).__mro__


def test_headers_in_order_gateway_extra_then_content_type() -> None:
    fast = GatewayResponse(b"{}", _answered_exchange(), (("x-truckllm-estimated", "true"),))
    assert list(fast.headers) == ["x-request-id", "x-truckllm-provider", "x-truckllm-model",
                                  "x-truckllm-attempts", "x-truckllm-overhead-ms",
                                  "x-truckllm-estimated", "Content-Type"]
    assert fast.status == 200 and fast.reason == "OK" and fast.body == b"{}"
    assert fast.content_type == "application/json" and fast.content_length == 2


def test_built_directly_with_this_aiohttp() -> None:
    """False means this aiohttp's Response constructor sets other attributes: answers
    are then built by the constructor (correct, slower). Update GatewayResponse."""
    assert GatewayResponse.direct is True


def test_the_constructor_fallback_builds_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    exchange = _answered_exchange()
    extra = (("x-truckllm-estimated", "true"),)
    direct = GatewayResponse(b'{"id": 1}', exchange, extra)
    monkeypatch.setattr(GatewayResponse, "direct", False)
    built = GatewayResponse(b'{"id": 1}', exchange, extra)
    overhead = direct.headers["x-truckllm-overhead-ms"]
    built.headers["x-truckllm-overhead-ms"] = overhead       # measured at each call
    assert _attributes(built) == _attributes(direct)
