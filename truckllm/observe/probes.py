"""Optional active health checks: each key of a provider with `health_check_interval_s`
is probed that often with its spec's free probe request (`GET /models` or equivalent,
never a completion), and the outcome is reported to health.

Owns one background loop, started and cancelled by the app's cleanup context. Reads the
current config snapshot on every round, so reloads apply without a restart.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable

import structlog

from truckllm.limits.upstream import upstream_ref
from truckllm.pipeline.health import Health
from truckllm.pipeline.retry import ErrorClass, Outcome, classify_response, transport_failed
from truckllm.pipeline.transport import Transport, TransportError
from truckllm.providers.base import Target, UpstreamKey
from truckllm.runtime.state import CompiledProvider, State

TICK_S = 1.0                # how often the loop looks for probes that are due
PROBE_TIMEOUT_S = 10.0
log = structlog.get_logger("truckllm.observe.probes")


async def run_probes(current: Callable[[], State], transport: Transport, health: Health,
                     *, tick_s: float = TICK_S) -> None:
    """Probe whatever is due, forever (until cancelled)."""
    last_probe: dict[str, float] = {}
    while True:
        try:
            await probe_due(current(), transport, health, last_probe, time.monotonic())
        except Exception:   # a bug here must not end health checks for good; say so loudly
            log.exception("health_check_round_failed")
        await asyncio.sleep(tick_s)


async def probe_due(state: State, transport: Transport, health: Health,
                    last_probe: dict[str, float], now: float) -> int:
    """Probe every key of each provider whose interval has passed; returns how many."""
    probes = []
    for provider in state.providers.values():
        interval = provider.config.health_check_interval_s
        target = _probe_target(state, provider)
        if interval is None or target is None:
            continue
        if now - last_probe.get(provider.id, -math.inf) < interval:
            continue
        last_probe[provider.id] = now
        probes += [_probe_key(provider, target, key, transport, health) for key in provider.keys]
    await asyncio.gather(*probes)
    return len(probes)


def _probe_target(state: State, provider: CompiledProvider) -> Target | None:
    """A target of this provider (for its base URL and headers), if it can be probed:
    it has a free probe request, is not in-process, and some alias uses it."""
    if provider.spec.build_probe is None or provider.spec.transport is not None:
        return None
    for route in state.all_routes:
        for target in route.targets:
            if target.provider_id == provider.id:
                return target
    return None


async def _probe_key(provider: CompiledProvider, target: Target, key: UpstreamKey,
                     transport: Transport, health: Health) -> None:
    build_probe = provider.spec.build_probe
    if build_probe is None:
        return
    request = build_probe(target, key.value)
    outcome: Outcome | None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            response = await transport.send(provider, target, request, f"probe-{os.urandom(6).hex()}")
            try:
                body = await response.read()
            finally:
                response.close()
        outcome = None if response.status < 400 else classify_response(
            response.status, response.headers, provider.spec.parse_error(response.status, body),
            now_unix=time.time())
    except TransportError as exc:
        outcome = transport_failed(exc.kind, str(exc))
    except TimeoutError:
        outcome = transport_failed("timeout", "health check got no answer in time")
    health.record_probe(upstream_ref(provider.id, key.id), outcome)
    if outcome is not None:
        fields = {"provider": provider.id, "key": key.id, "error_class": outcome.error_class.value,
                  "status": outcome.status, "detail": outcome.message}
        if outcome.error_class is ErrorClass.AUTH:
            log.error("upstream_key_rejected", action="key disabled until the next reload", **fields)
        else:
            log.warning("health_check_failed", **fields)
