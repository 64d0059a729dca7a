"""Client keys through the admin API: GET /admin/v1/keys (usage, spend, budgets, limits),
POST /admin/v1/keys (create), PATCH and DELETE /admin/v1/keys/{id} (change, revoke) and
POST /admin/v1/keys/{id}/reset. Behind `server.admin_api_key`; off (404) when it is not set.

Creating, changing and revoking are edits of the config file (truckllm.config.edits),
validated, written atomically and applied by the reloader, like every config change:
the file stays the one source of truth. A new key's plaintext is returned once and only
its `sha256:` form is written. Authorised by truckllm.server.auth.require_admin.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import UTC
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from truckllm import errors
from truckllm.config.edits import KEY_FIELDS, EditError, add_key, remove_key, update_key
from truckllm.config.schema import ClientKeyConfig
from truckllm.runtime.reloader import ReloadResult
from truckllm.runtime.state import State
from truckllm.server.admin import reload_everywhere
from truckllm.server.auth import require_admin
from truckllm.server.keys import LIMITER, OPS, STATE
from truckllm.server.peers import merge_key_reports

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_MAX_BODY = 64 * 1024
_PLACEHOLDER_HASH = "sha256:" + "0" * 64       # stands in for the key while fields are checked
_KEY_INDEX = re.compile(r"keys\[\d+\]\.?")


async def list_keys(request: web.Request) -> web.Response:
    state = _require_admin(request)
    limiter, policy = request.app[LIMITER], state.limits
    keys = [await limiter.key_report(policy, key.id) for key in state.config.keys or []]
    peers = request.app[OPS].worker_peers
    if peers is not None:                   # --workers: every worker's usage
        keys = _merged(request, keys, await peers.get_json(SELF_KEYS_PATH))
    gateway = {"limits": policy.gateway.as_dict()}
    return _json({"keys": keys, "gateway": gateway})


SELF_KEYS_PATH = "/keys/self"               # this worker's part, on its private listener


async def own_keys(request: web.Request) -> web.Response:
    """This worker's report of every key, or of the key `?id=` names."""
    state = request.app[STATE].current
    wanted = request.query.get("id")
    ids = [key.id for key in state.config.keys or [] if wanted in (None, key.id)]
    limiter = request.app[LIMITER]
    return _json({"keys": [await limiter.key_report(state.limits, key_id) for key_id in ids]})


async def own_reset(request: web.Request) -> web.Response:
    """This worker resets a key's period counters, at another worker's admin call."""
    state = request.app[STATE].current
    reset = await request.app[LIMITER].reset_key(state.limits, request.query.get("id", ""))
    return _json({"reset": reset})


def _merged(request: web.Request, own: list[dict[str, Any]],
            answers: list[Any]) -> list[dict[str, Any]]:
    """Each key's report merged with the other workers': what the shared state server
    holds (usage and spend with `state_url`, and the windows of keys it checks) is
    taken once, what each worker counts alone adds up."""
    policy = request.app[STATE].current.limits
    shared = request.app[OPS].started_with.config.server.state_url is not None
    theirs: dict[str, list[dict[str, Any]]] = {}
    for answer in answers:
        for report in answer.get("keys", []):
            theirs.setdefault(report["id"], []).append(report)
    checked_by_store = shared and policy.gateway.limited
    return [merge_key_reports(
        [report, *theirs.get(report["id"], [])], shared_accounts=shared,
        shared_windows=checked_by_store or (shared and policy.key(report["id"]).limited))
        for report in own]


async def create_key(request: web.Request) -> web.Response:
    """201 with the plaintext key, shown this once; the file gets its sha256: form."""
    _require_admin(request)
    body = await _read_object(request)
    key_id = body.get("id")
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise errors.InvalidRequest(
            "`id` must be 1-64 letters, digits or . _ @ - (starting with a letter or digit).",
            param="id")
    fields = _checked_fields(body, key_id, allowed=("id", *KEY_FIELDS))
    plaintext = "tk-" + secrets.token_urlsafe(32)
    digest = "sha256:" + hashlib.sha256(plaintext.encode()).hexdigest()
    entry = {"id": key_id, "key": digest, **{k: v for k, v in fields.items() if v is not None}}
    result = await _edit(request, lambda raw: add_key(raw, entry), "admin_keys")
    report = await _report(request, key_id)
    return _json({**report, "key": plaintext, "config_version": result.version}, status=201,
                 headers={"Cache-Control": "no-store"})


async def change_key(request: web.Request) -> web.Response:
    """Set (or, with null, remove) a key's models, limits, budget or expiry."""
    _require_admin(request)
    key_id = request.match_info["key_id"]
    body = await _read_object(request)
    if "id" in body and body["id"] != key_id:
        raise errors.InvalidRequest("A key's `id` cannot be changed; create a new key.",
                                    param="id")
    body.pop("id", None)
    changes = _checked_fields(body, key_id, allowed=KEY_FIELDS)
    if not changes:
        raise errors.InvalidRequest(f"Nothing to change: give one of {', '.join(KEY_FIELDS)}.")
    result = await _edit(request, lambda raw: update_key(raw, key_id, changes), "admin_keys")
    return _json({**(await _report(request, key_id)), "config_version": result.version})


async def revoke_key(request: web.Request) -> web.Response:
    """Remove the key from the file and apply it: it stops working at once."""
    _require_admin(request)
    key_id = request.match_info["key_id"]
    result = await _edit(request, lambda raw: remove_key(raw, key_id), "admin_keys")
    return _json({"id": key_id, "revoked": True, "config_version": result.version})


async def reset_key(request: web.Request) -> web.Response:
    state = _require_admin(request)
    key_id = request.match_info["key_id"]
    limiter = request.app[LIMITER]
    if not await limiter.reset_key(state.limits, key_id):
        raise errors.NotFound(f"No client key with id {key_id!r}.", code="key_not_found")
    peers = request.app[OPS].worker_peers
    if peers is not None:                   # --workers: each worker's counters too
        await peers.post_json(SELF_RESET_PATH, {"id": key_id})
    return _json({"reset": True, "key": await _report(request, key_id)})


SELF_RESET_PATH = "/keys/reset/self"


def _checked_fields(body: dict[str, Any], key_id: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The key fields of `body`, checked as the config schema checks them, in the form
    written to the file; null values stay None (a PATCH removes those fields)."""
    for name in body:
        if name not in allowed:
            raise errors.InvalidRequest(
                f"Unknown field {name!r}; a key takes {', '.join(allowed)}.", param=name)
    given = {name: value for name, value in body.items() if name != "id"}
    try:
        checked = ClientKeyConfig.model_validate(
            {"id": key_id, "key": _PLACEHOLDER_HASH,
             **{name: value for name, value in given.items() if value is not None}})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        raise errors.InvalidRequest(f"`{field}`: {first['msg']}", param=field) from None
    fields: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            fields[name] = None
        elif name == "expires":
            expires = checked.expires
            assert expires is not None
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            fields[name] = expires.astimezone(UTC).isoformat().replace("+00:00", "Z")
        else:
            fields[name] = getattr(checked, name)
    return fields


async def _edit(request: web.Request, edit: Callable[[bytes], bytes], trigger: str) -> ReloadResult:
    reloader = request.app[OPS].reloader
    try:
        result = await reloader.apply_edit(edit, trigger)
    except EditError as exc:
        failure: errors.GatewayError = (
            errors.NotFound(str(exc), code=exc.code) if exc.status == 404
            else errors.Conflict(str(exc), code=exc.code, param=exc.param) if exc.status == 409
            else errors.InvalidRequest(str(exc), code=exc.code, param=exc.param))
        raise failure from None
    if result.write_failed:
        raise errors.GatewayError(result.errors[0].message, code="config_not_writable")
    if not result.ok:
        first = result.errors[0]
        raise errors.InvalidRequest(
            "The config would not be valid: " + "; ".join(str(i) for i in result.errors[:5]),
            param=_KEY_INDEX.sub("", first.path, count=1) or None, code="invalid_config")
    await reload_everywhere(request.app[OPS], result)
    return result


async def _report(request: web.Request, key_id: str) -> dict[str, Any]:
    state = request.app[STATE].current
    report = await request.app[LIMITER].key_report(state.limits, key_id)
    peers = request.app[OPS].worker_peers
    if peers is None:
        return report
    answers = await peers.get_json(SELF_KEYS_PATH, {"id": key_id})
    return _merged(request, [report], answers)[0]


async def _read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise errors.PayloadTooLarge("A key request body may be at most 64 KiB.")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise errors.InvalidRequest("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("The body must be a JSON object.")
    return body


def _require_admin(request: web.Request) -> State:
    state = request.app[STATE].current
    require_admin(request, state)
    return state


def _json(payload: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json", headers=headers)


def routes() -> list[web.RouteDef]:
    return [web.get("/admin/v1/keys", list_keys),
            web.post("/admin/v1/keys", create_key),
            web.patch("/admin/v1/keys/{key_id}", change_key),
            web.delete("/admin/v1/keys/{key_id}", revoke_key),
            web.post("/admin/v1/keys/{key_id}/reset", reset_key)]
