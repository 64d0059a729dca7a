"""The operator console (GET /admin/) and the per-second history it charts
(GET /admin/v1/history).

The console is one static page shipped in the package (truckllm/server/console/): no
build step, nothing loaded from elsewhere, so it works offline. The page itself holds no
data and no secret; it asks for the admin key, keeps it in the tab's sessionStorage and
calls the admin API with it. Like the rest of the admin API it is served only when an
admin key is configured (404 otherwise), and only on `server.admin_listen` when that is
set. A strict Content-Security-Policy keeps the page to its own origin.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import orjson
from aiohttp import web

from truckllm import errors
from truckllm.server.auth import require_admin
from truckllm.server.keys import OPS, STATE
from truckllm.server.peers import merge_history

_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css",
          "icon.svg": "image/svg+xml"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def routes() -> list[web.RouteDef]:
    return [web.get("/admin/", page),
            web.get("/admin/console/{name}", asset),
            web.get("/admin/v1/history", history)]


@cache
def _read(name: str) -> bytes:
    return (resources.files("truckllm.server") / "console" / name).read_bytes()


def _admin_is_on(request: web.Request) -> None:
    """The console exists only where the admin API does."""
    admin_key = request.app[STATE].current.config.server.admin_api_key
    if admin_key is None or not admin_key.get_secret_value():
        raise errors.NotFound(f"Unknown path: {request.method} {request.path}", code="unknown_url")


def _file(name: str) -> web.Response:
    return web.Response(body=_read(name), content_type=_FILES[name], charset="utf-8",
                        headers=_SECURITY_HEADERS)


async def page(request: web.Request) -> web.Response:
    _admin_is_on(request)
    return _file("index.html")


async def asset(request: web.Request) -> web.Response:
    _admin_is_on(request)
    name = request.match_info["name"]
    if name not in _FILES or name == "index.html":
        raise errors.NotFound(f"Unknown path: {request.method} {request.path}", code="unknown_url")
    return _file(name)


async def history(request: web.Request) -> web.Response:
    """Per second of the last hour: requests, errors, latency p50/p95, tokens, cost.
    `?since=<unix second>` gives only the seconds after it (the console polls that way)."""
    require_admin(request, request.app[STATE].current)
    raw = request.query.get("since")
    since: int | None = None
    if raw is not None:
        try:
            since = int(raw)
        except ValueError:
            raise errors.InvalidRequest("`since` must be a unix time in seconds.",
                                        param="since") from None
    ops = request.app[OPS]
    report = ops.history.report(since)
    if ops.worker_peers is not None:        # --workers: every worker's requests
        query = {} if since is None else {"since": str(since)}
        report = merge_history([report, *await ops.worker_peers.get_json(SELF_HISTORY_PATH,
                                                                          query)])
    return web.Response(body=orjson.dumps(report), content_type="application/json")


SELF_HISTORY_PATH = "/history/self"         # this worker's part, on its private listener


async def own_history(request: web.Request) -> web.Response:
    raw = request.query.get("since")
    since = int(raw) if raw is not None and raw.lstrip("-").isdigit() else None
    body = orjson.dumps(request.app[OPS].history.report(since))
    return web.Response(body=body, content_type="application/json")
