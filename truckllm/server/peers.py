"""`--workers`: the admin API answers for the whole server, whichever worker takes the call.

Each worker serves its own part of every admin read (and follows up the admin writes: a
reload, a key's reset) on its private 127.0.0.1 listener (truckllm.server.runner), the
one that also serves its own metrics. The worker that takes an admin call asks the others
there (`Peers`) and merges their parts with its own, keeping the one-process shape:
counters and work in progress add up, health is the worst of the workers' (the latest
cooldown), the request log is merged newest first before its limit applies. Figures that
the shared state server already holds for everyone (`server.state_url`) are taken once,
not added up. A worker that does not answer within its time is left out: it is
restarting.

The private listener is reachable by anyone on the host, so it answers only calls that
carry the token the supervisor gives its workers (never logged, never in an answer).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

TOKEN_HEADER = "x-truckllm-worker-token"
READ_TIMEOUT_S = 1.0
WRITE_TIMEOUT_S = 30.0      # a reload compiles the config: a big one takes a while

_STATUS_RANK = {"healthy": 0, "degraded": 1, "down": 2}


@dataclass(frozen=True, slots=True)
class Peers:
    """The other workers of this server: where their private listeners are, and the
    token they want."""

    ports: Callable[[], list[int]]
    token: str

    async def get_json(self, path: str, query: Mapping[str, str] | None = None) -> list[Any]:
        """Every other worker's JSON answer to GET `path`."""
        return await self._ask("GET", path, query, READ_TIMEOUT_S, _read_json)

    async def get_text(self, path: str) -> list[str]:
        return await self._ask("GET", path, None, READ_TIMEOUT_S, _read_text)

    async def post_json(self, path: str, query: Mapping[str, str] | None = None) -> list[Any]:
        """Every other worker's JSON answer to POST `path` (a write each must follow)."""
        return await self._ask("POST", path, query, WRITE_TIMEOUT_S, _read_json)

    async def _ask(self, method: str, path: str, query: Mapping[str, str] | None,
                   timeout_s: float, read: Callable[[aiohttp.ClientResponse], Awaitable[Any]],
                   ) -> list[Any]:
        ports = self.ports()
        if not ports:
            return []
        headers = {TOKEN_HEADER: self.token}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                         headers=headers) as session:
            async def one(port: int) -> Any:
                try:
                    async with session.request(method, f"http://127.0.0.1:{port}{path}",
                                               params=query) as reply:
                        return await read(reply) if reply.status == 200 else None
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return None
            answers = await asyncio.gather(*(one(port) for port in ports))
        return [answer for answer in answers if answer is not None]


async def _read_json(reply: aiohttp.ClientResponse) -> Any:
    return await reply.json()


async def _read_text(reply: aiohttp.ClientResponse) -> str:
    return await reply.text()


def token_guard(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware of the private listener: only the other workers get an answer."""
    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> web.StreamResponse:
        given = request.headers.get(TOKEN_HEADER, "")
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=403)
        return await handler(request)
    return guard


# -- merging the workers' answers ----------------------------------------------------


def merge_providers(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """GET /admin/v1/providers of every worker as one: traffic, errors, usage and spend
    add up (each worker counts its own); a key's or provider's status is the worst any
    worker sees, its cooldown the latest."""
    merged: dict[str, dict[str, Any]] = {}
    for answer in answers:
        for provider in answer.get("providers", []):
            known = merged.get(provider["id"])
            if known is None:
                merged[provider["id"]] = _copy_provider(provider)
                continue
            known["status"] = _worst(known["status"], provider["status"])
            keys = {key["id"]: key for key in known["keys"]}
            for key in provider["keys"]:
                if key["id"] not in keys:
                    known["keys"].append(_copy_key(key))
                    continue
                _add_key(keys[key["id"]], key)
    return {"providers": list(merged.values())}


def _copy_provider(provider: dict[str, Any]) -> dict[str, Any]:
    return {**provider, "keys": [_copy_key(key) for key in provider["keys"]]}


def _copy_key(key: dict[str, Any]) -> dict[str, Any]:
    return {**key, "lifetime": dict(key["lifetime"])}


def _add_key(into: dict[str, Any], key: dict[str, Any]) -> None:
    for name in ("usage_req", "usage_tokens", "errors", "spend_usd"):
        into[name] += key[name]
    for name in ("requests", "tokens", "spend_usd"):
        into["lifetime"][name] += key["lifetime"][name]
    into["last_error"] = into["last_error"] or key["last_error"]
    into["status"] = _worst(into["status"], key["status"])
    into["cooldown_until"] = _latest(into["cooldown_until"], key["cooldown_until"])


def _worst(a: str, b: str) -> str:
    return a if _STATUS_RANK.get(a, 0) >= _STATUS_RANK.get(b, 0) else b


def _latest(a: str | None, b: str | None) -> str | None:
    """The later of two ISO 8601 UTC times written alike (null: none)."""
    if a is None or b is None:
        return a or b
    return max(a, b)


def merge_logs(answers: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """The workers' request logs as one, newest first, `limit` entries at most."""
    entries = [entry for answer in answers for entry in answer.get("logs", [])]
    entries.sort(key=lambda entry: str(entry.get("timestamp", "")), reverse=True)
    return {"logs": entries[:limit]}


_HISTORY_SUMS = ("requests", "errors", "client_errors", "tokens", "cost_usd")


def merge_history(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' per-second histories as one: counts, tokens and cost add up; the
    latency quantiles of a second are the workers', weighted by their requests in it."""
    seconds: dict[int, dict[str, float]] = {}
    for answer in answers:
        series = answer["series"]
        for index, second in enumerate(series["t"]):
            slot = seconds.setdefault(second, dict.fromkeys(
                (*_HISTORY_SUMS, "p50_weighted", "p95_weighted"), 0.0))
            requests = series["requests"][index]
            for name in _HISTORY_SUMS:
                slot[name] += series[name][index]
            slot["p50_weighted"] += series["p50_ms"][index] * requests
            slot["p95_weighted"] += series["p95_ms"][index] * requests
    columns: dict[str, list[Any]] = {name: [] for name in (
        "t", "requests", "errors", "client_errors", "p50_ms", "p95_ms", "tokens", "cost_usd")}
    for second in sorted(seconds):
        slot = seconds[second]
        requests = slot["requests"]
        columns["t"].append(second)
        for name in ("requests", "errors", "client_errors", "tokens"):
            columns[name].append(int(slot[name]))
        columns["p50_ms"].append(round(slot["p50_weighted"] / requests, 3) if requests else 0.0)
        columns["p95_ms"].append(round(slot["p95_weighted"] / requests, 3) if requests else 0.0)
        columns["cost_usd"].append(round(slot["cost_usd"], 9))
    first = answers[0]
    return {**first, "now": max(answer["now"] for answer in answers), "series": columns}


_ACCOUNT_SUMS = ("requests", "tokens", "prompt_tokens", "completion_tokens", "spend_usd")


def merge_key_reports(reports: Iterable[dict[str, Any]], *, shared_accounts: bool,
                      shared_windows: bool) -> dict[str, Any]:
    """One client key's report (GET /admin/v1/keys) from every worker's. What the shared
    state server holds (`shared_*`) is the same in every report: the first one's is
    kept; what each worker counts alone adds up."""
    first, *others = list(reports)
    merged = {**first, "current": dict(first["current"]), "lifetime": dict(first["lifetime"])}
    for report in others:
        if not shared_accounts:
            for name in _ACCOUNT_SUMS:
                merged[name] += report[name]
            for name in ("requests", "tokens", "spend_usd"):
                merged["lifetime"][name] += report["lifetime"][name]
        if not shared_windows:
            for name in ("requests_last_minute", "tokens_last_minute", "in_flight"):
                merged["current"][name] += report["current"][name]
    if not shared_accounts and merged["budget_usd"] is not None:
        merged["budget_left_usd"] = max(0.0, merged["budget_usd"] - merged["spend_usd"])
    return merged
