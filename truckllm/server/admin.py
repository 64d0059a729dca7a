"""The admin API (/admin/v1/...) and GET /metrics.

The admin API answers 404 when no `server.admin_api_key` is configured and 401 without
it; the key is compared in constant time. Responses carry ids, counts and references,
never a secret value. Handlers only translate HTTP to the Ops objects and back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import orjson
import yaml
from aiohttp import web

from truckllm import __version__, errors
from truckllm.config.changes import RESTART_SETTINGS
from truckllm.config.redaction import redacted_config
from truckllm.observe.request_log import LogQuery
from truckllm.runtime.reloader import ReloadResult
from truckllm.server.auth import require_admin
from truckllm.server.keys import OPS, ROUTING, STATE
from truckllm.server.ops import Ops
from truckllm.server.peers import merge_logs, merge_providers
from truckllm.server.workers import merge_metrics

_MAX_CONFIG_BYTES = 4 * 1024 * 1024


def admin_routes() -> list[web.RouteDef]:
    return [
        web.get("/admin/v1/config", get_config),
        web.post("/admin/v1/config", post_config),
        web.post("/admin/v1/config/validate", validate_config),
        web.post("/admin/v1/reload", reload_config),
        web.get("/admin/v1/providers", providers),
        web.get("/admin/v1/logs", logs),
        web.get("/admin/v1/status", status),
    ]


def metrics_routes() -> list[web.RouteDef]:
    return [web.get("/metrics", metrics)]


async def metrics(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    if not ops.holder.current.config.server.metrics:
        raise errors.NotFound(f"Unknown path: {request.method} {request.path}", code="unknown_url")
    ops.metrics.set_upstream_health(_upstream_statuses(request))
    body, content_type = ops.metrics.render()
    if ops.worker_peers is not None:        # --workers: every worker's numbers
        others = await ops.worker_peers.get_text(SELF_METRICS_PATH)
        body = merge_metrics([body.decode(), *others]).encode()
    return web.Response(body=body, headers={"Content-Type": content_type})


# This worker's own part of each answer, on its private listener (truckllm.server.peers).
SELF_METRICS_PATH = "/metrics/self"
SELF_STATUS_PATH = "/status/self"
SELF_PROVIDERS_PATH = "/providers/self"
SELF_LOGS_PATH = "/logs/self"
SELF_RELOAD_PATH = "/reload/self"


async def own_metrics(request: web.Request) -> web.Response:
    """This worker's own metrics, on its private port (see truckllm.server.workers)."""
    ops = request.app[OPS]
    ops.metrics.set_upstream_health(_upstream_statuses(request))
    body, content_type = ops.metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def _upstream_statuses(request: web.Request) -> Iterator[tuple[str, str, str]]:
    health = request.app[ROUTING].health
    for provider in request.app[STATE].current.providers.values():
        key_ids = [key.id for key in provider.keys]
        report = health.provider_report(provider.id, provider.config.type, key_ids)
        yield provider.id, "", report["status"]
        for entry in report["keys"]:
            yield provider.id, entry["id"], entry["status"]


def _authorized(request: web.Request) -> Ops:
    ops = request.app[OPS]
    require_admin(request, ops.holder.current)
    return ops


async def get_config(request: web.Request) -> web.Response:
    ops = _authorized(request)
    loaded = ops.reloader.loaded
    headers = {"x-truckllm-config-version": str(ops.reloader.version),
               "x-truckllm-config-sha256": loaded.sha256}
    if request.query.get("format") == "yaml":     # the console edits it as YAML text
        text = yaml.safe_dump(redacted_config(loaded), sort_keys=False, allow_unicode=True)
        return web.Response(text=text, content_type="application/yaml", headers=headers)
    return _json(redacted_config(loaded), headers=headers)


async def post_config(request: web.Request) -> web.Response:
    ops = _authorized(request)
    result = await ops.reloader.apply_posted(await _read_body(request))
    await reload_everywhere(ops, result)
    return _reload_response(result)


async def validate_config(request: web.Request) -> web.Response:
    ops = _authorized(request)
    issues = await ops.reloader.validate_posted(await _read_body(request))
    if not issues:
        return _json({"valid": True})
    return _json({"valid": False, "errors": [issue.as_dict() for issue in issues]})


async def reload_config(request: web.Request) -> web.Response:
    ops = _authorized(request)
    result = await ops.reloader.reload("admin")
    await reload_everywhere(ops, result)
    return _reload_response(result)


async def reload_everywhere(ops: Ops, result: ReloadResult) -> None:
    """--workers: once this worker has applied the file, every other worker reloads it
    too before the admin call is answered (whether or not it watches the file)."""
    if ops.worker_peers is not None and result.ok:
        await ops.worker_peers.post_json(SELF_RELOAD_PATH)


async def own_reload(request: web.Request) -> web.Response:
    """This worker reloads its file, at another worker's admin call."""
    return _json((await request.app[OPS].reloader.reload("worker")).as_dict())


async def providers(request: web.Request) -> web.Response:
    """Every upstream key's record: status and cooldown (routing health), traffic since
    start, and usage and spend that survive restarts (the state file)."""
    ops = _authorized(request)
    body = _providers(request)
    if ops.worker_peers is not None:        # --workers: every worker's traffic and health
        body = merge_providers([body, *await ops.worker_peers.get_json(SELF_PROVIDERS_PATH)])
    return _json(body)


async def own_providers(request: web.Request) -> web.Response:
    return _json(_providers(request))


def _providers(request: web.Request) -> dict[str, Any]:
    health = request.app[ROUTING].health
    listed = [health.provider_report(provider.id, provider.config.type,
                                     [key.id for key in provider.keys])
              for provider in request.app[STATE].current.providers.values()]
    return {"providers": listed}


async def logs(request: web.Request) -> web.Response:
    ops = _authorized(request)
    query = LogQuery.from_params(request.query)
    body = {"logs": ops.request_log.query(query)}
    if ops.worker_peers is not None:        # --workers: every worker's requests
        others = await ops.worker_peers.get_json(SELF_LOGS_PATH, request.query)
        body = merge_logs([body, *others], query.limit)
    return _json(body)


async def own_logs(request: web.Request) -> web.Response:
    query = LogQuery.from_params(request.query)
    return _json({"logs": request.app[OPS].request_log.query(query)})


async def status(request: web.Request) -> web.Response:
    ops = _authorized(request)
    body = _status(ops)
    if ops.worker_peers is not None:        # --workers: what each worker runs
        workers = [_worker_status(ops), *await ops.worker_peers.get_json(SELF_STATUS_PATH)]
        body["workers"] = sorted(workers, key=lambda entry: entry.get("worker") or 0)
        body["inflight"] = sum(entry["inflight"] for entry in workers)
    return _json(body)


def _worker_status(ops: Ops) -> dict[str, Any]:
    return {"worker": ops.worker_index, "pid": os.getpid(),
            "config": {"version": ops.reloader.version, "sha256": ops.reloader.loaded.sha256},
            "inflight": ops.inflight.count, "state_backend": ops.state_backend()}


async def own_status(request: web.Request) -> web.Response:
    """This worker's part of the status, on its private port."""
    return _json(_worker_status(request.app[OPS]))


def _status(ops: Ops) -> dict[str, Any]:
    reloader = ops.reloader
    last = reloader.last_result
    now = time.time()
    running, started = reloader.loaded.config.server, ops.started_with.config.server
    return {
        "version": __version__,
        "config": {"version": reloader.version, "sha256": reloader.loaded.sha256,
                   "path": str(reloader.path), "loaded_at": ops.holder.loaded_at,
                   "watching": reloader.watching},
        "last_reload": None if last is None else {
            "at": last.at, "trigger": last.trigger, "result": "success" if last.ok else "error",
            "errors": [issue.as_dict() for issue in last.errors]},
        "needs_restart": [f"server.{name}" for name in RESTART_SETTINGS
                          if getattr(running, name) != getattr(started, name)],
        "started_at": ops.started_at,
        "uptime_s": round(now - ops.started_at, 3),
        "inflight": ops.inflight.count,
        "state_backend": ops.state_backend(),
    }


def _reload_response(result: ReloadResult) -> web.Response:
    body = result.as_dict()
    if result.ok:
        return _json(body)
    if result.write_failed:
        failure = errors.GatewayError(result.errors[0].message, code="config_not_writable")
    else:
        failure = errors.InvalidRequest(
            "; ".join(str(issue) for issue in result.errors[:5]), code="invalid_config")
    return _json({**failure.body(), **body}, status=failure.status)


async def _read_body(request: web.Request) -> bytes:
    too_large = errors.PayloadTooLarge(
        f"A config body may be at most {_MAX_CONFIG_BYTES // (1024 * 1024)} MiB.")
    if (request.content_length or 0) > _MAX_CONFIG_BYTES:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > _MAX_CONFIG_BYTES:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)
