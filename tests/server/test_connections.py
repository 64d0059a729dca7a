"""server/connections.py leans on aiohttp internals (see its docstring): this fails loudly
when the installed aiohttp is one it was not checked against, or those parts changed."""

from __future__ import annotations

import inspect

import aiohttp
from aiohttp import web

from truckllm.server.connections import SUPPORTED_AIOHTTP, GatewaySite, JsonErrorsHandler


def test_the_installed_aiohttp_is_in_the_checked_range() -> None:
    installed = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    low, high = SUPPORTED_AIOHTTP
    assert low <= installed < high, (
        f"aiohttp {aiohttp.__version__} is outside the range server/connections.py was "
        f"checked against ({low} to {high}): check its overrides, then widen the range")


def test_handle_error_still_has_the_signature_we_override() -> None:
    theirs = inspect.signature(web.RequestHandler.handle_error)
    ours = inspect.signature(JsonErrorsHandler.handle_error)
    assert list(theirs.parameters) == list(ours.parameters)


def test_sites_still_keep_their_server_and_runner_where_we_read_them() -> None:
    source = inspect.getsource(web.TCPSite.start)
    assert "self._server = await loop.create_server(" in source
    assert "self._runner.server" in source
    assert issubclass(GatewaySite, web.BaseSite)
    assert "_runner" in web.BaseSite.__slots__ and "_server" in web.BaseSite.__slots__
