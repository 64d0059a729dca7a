"""GET /admin/v1/keys and POST /admin/v1/keys/{id}/reset: client keys' usage, spend,
budgets and limits. Behind `server.admin_api_key`; off (404) when it is not set.

Authorised by truckllm.server.auth.require_admin, like the rest of the admin API.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from truckllm import errors
from truckllm.runtime.state import State
from truckllm.server.auth import require_admin
from truckllm.server.keys import LIMITER, STATE


async def list_keys(request: web.Request) -> web.Response:
    state = _require_admin(request)
    limiter, policy = request.app[LIMITER], state.limits
    keys = [await limiter.key_report(policy, key.id) for key in state.config.keys or []]
    gateway = {"limits": policy.gateway.as_dict()}
    return _json({"keys": keys, "gateway": gateway})


async def reset_key(request: web.Request) -> web.Response:
    state = _require_admin(request)
    key_id = request.match_info["key_id"]
    limiter = request.app[LIMITER]
    if not await limiter.reset_key(state.limits, key_id):
        raise errors.NotFound(f"No client key with id {key_id!r}.", code="key_not_found")
    return _json({"reset": True, "key": await limiter.key_report(state.limits, key_id)})


def _require_admin(request: web.Request) -> State:
    state = request.app[STATE].current
    require_admin(request, state)
    return state


def _json(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [web.get("/admin/v1/keys", list_keys), web.post("/admin/v1/keys/{key_id}/reset", reset_key)]
