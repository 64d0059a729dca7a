"""State: the frozen, compiled snapshot of one config, and the holder that swaps it.

Everything a request needs is precomputed here once per config: provider specs looked up
in the registry, key values resolved with the request headers that carry them, targets
built per alias (each with its provider's typed settings), client keys indexed by
digest, allow-lists compiled. A request reads `holder.current` once and uses that
snapshot to the end, so a reload never changes a request halfway.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC
from types import MappingProxyType

from truckllm.config.globs import AliasPattern, by_specificity, compile_globs, is_wildcard
from truckllm.config.loader import LoadedConfig
from truckllm.config.schema import ClientKeyConfig, Config, ModelConfig, ProviderConfig
from truckllm.limits.policy import LimitsPolicy, compile_policy
from truckllm.limits.upstream import TargetId, upstream_ref
from truckllm.pipeline.router import Candidate, RouteTarget, fixed_plan
from truckllm.providers.base import Operation, ProviderSpec, Target, UpstreamKey
from truckllm.providers.registry import REGISTRY
from truckllm.providers.shared.model_ids import check_chosen_model


@dataclass(frozen=True, slots=True)
class CompiledProvider:
    id: str
    spec: ProviderSpec
    config: ProviderConfig
    keys: tuple[UpstreamKey, ...]
    timeout_s: float
    keys_by_id: Mapping[str, UpstreamKey] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteChoices:
    """What the router chooses between for one operation of a route: the targets whose
    provider serves it, and the Target behind each target id."""

    targets: tuple[RouteTarget, ...]
    by_id: Mapping[TargetId, Target]
    # Every request's candidates, when their order never depends on cursors or health
    # (router.fixed_plan); None: `plan` orders them per request.
    fixed: tuple[Candidate, ...] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    alias: str
    config: ModelConfig
    targets: tuple[Target, ...]
    # Per operation, compiled once per snapshot (a wildcard's targets, whose model each
    # request fills in, are compiled per request by `route_choices`).
    choices: Mapping[Operation, RouteChoices] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientKey:
    id: str
    digest: bytes
    allowed: re.Pattern[str] | None     # None: every alias
    expires_at: float | None            # unix seconds
    config: ClientKeyConfig

    def may_use(self, model: str) -> bool:
        return self.allowed is None or self.allowed.match(model) is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class State:
    loaded: LoadedConfig
    version: int
    providers: Mapping[str, CompiledProvider]
    routes: Mapping[str, Route]                       # exact aliases
    # Wildcard aliases with their routes, the most specific pattern first.
    wildcard_routes: tuple[tuple[AliasPattern, Route], ...]
    client_keys: Mapping[bytes, ClientKey] | None     # by sha256 digest; None: open API
    all_routes: tuple[Route, ...]                     # every alias, in config order
    loaded_at: float                                  # unix seconds
    limits: LimitsPolicy = field(default_factory=LimitsPolicy)   # rate limits, budgets, prices
    # Keys already verified against this snapshot, by the text presented: a repeat caller
    # skips the SHA-256 (the costliest step of auth). At most one entry per client key,
    # since only verified keys go in; it dies with the snapshot, so a reload that drops
    # or changes a key takes effect at once. Filled by `authenticate` alone.
    verified_keys: dict[str, ClientKey] = field(default_factory=dict, init=False, compare=False,
                                                repr=False)

    # `loaded.config`, as a field rather than a property: it is read on every request.
    config: Config = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", self.loaded.config)

    def resolve(self, model: str) -> tuple[Route, tuple[Target, ...]] | None:
        """The route for a model name and its targets: an exact alias first, else the most
        specific wildcard alias matching it, with `*` in its targets' models replaced by
        what the alias's `*` matched."""
        route = self.routes.get(model)
        if route is not None:
            return route, route.targets
        for pattern, route in self.wildcard_routes:
            matched = pattern.match(model)
            if matched is not None:
                check_chosen_model(model, matched)
                return route, tuple(replace(t, model=t.model.replace("*", matched)) for t in route.targets)
        return None

    def authenticate(self, presented: str) -> ClientKey | None:
        """Look a presented key up by digest; compare digests in constant time."""
        assert self.client_keys is not None
        # A dict hit compares strings only after their (seeded, 64-bit) hashes match, so
        # its timing says nothing useful about a wrong key; a miss takes the digest path.
        known = self.verified_keys.get(presented)
        if known is not None:
            return known
        # A header that is not UTF-8 arrives surrogate-escaped; it is just a wrong key.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        key = self.client_keys.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            return None
        self.verified_keys[presented] = key
        return key


def build_state(loaded: LoadedConfig, version: int) -> State:
    config = loaded.config
    providers = {p.id: _compile_provider(p) for p in config.providers}
    routes: dict[str, Route] = {}
    patterns: list[AliasPattern] = []
    all_routes = tuple(_compile_route(m, providers) for m in config.models)
    for route in all_routes:
        if is_wildcard(route.alias):
            patterns.append(AliasPattern(route.alias))
        else:
            routes[route.alias] = route
    by_alias = {route.alias: route for route in all_routes}
    wildcards = [(pattern, by_alias[pattern.alias]) for pattern in by_specificity(patterns)]
    client_keys = None
    if config.keys is not None:
        client_keys = MappingProxyType({k.digest: k for k in map(_compile_client_key, config.keys)})
    return State(loaded, version, MappingProxyType(providers), MappingProxyType(routes),
                 tuple(wildcards), client_keys, all_routes, time.time(),
                 limits=compile_policy(config))


def _compile_provider(config: ProviderConfig) -> CompiledProvider:
    spec = REGISTRY[config.type]
    keys = tuple(compile_key(spec, config.headers, k.id, k.value.get_secret_value(), k.weight,
                             upstream_ref(config.id, k.id))
                 for k in config.keys)
    return CompiledProvider(config.id, spec, config, keys, config.timeout_s,
                            MappingProxyType({k.id: k for k in keys}))


def compile_key(spec: ProviderSpec, provider_headers: Mapping[str, str], key_id: str, value: str,
                weight: float = 1.0, ref: str = "") -> UpstreamKey:
    """An upstream key with the request headers that carry it, built once per snapshot
    (they die with it, so a reload that changes a key leaves no copy of the old one)."""
    if spec.key_headers is None:
        return UpstreamKey(key_id, value, weight, ref)
    return UpstreamKey(key_id, value, weight, ref, spec.key_headers(provider_headers, value))


def _compile_route(model: ModelConfig, providers: Mapping[str, CompiledProvider]) -> Route:
    targets = tuple(_compile_target(t.provider, t.model, providers) for t in model.targets)
    operations = {op for t in targets for op in providers[t.provider_id].spec.operations}
    choices = {op: route_choices(model, targets, providers, op) for op in sorted(operations)}
    return Route(model.alias, model, targets, MappingProxyType(choices))


def route_choices(model: ModelConfig, targets: tuple[Target, ...],
                  providers: Mapping[str, CompiledProvider], op: Operation) -> RouteChoices:
    """The targets (of `model`, resolved to `targets`) whose provider serves `op`."""
    route_targets: list[RouteTarget] = []
    by_id: dict[TargetId, Target] = {}
    for target, entry in zip(targets, model.targets, strict=True):
        provider = providers[target.provider_id]
        if op not in provider.spec.operations:
            continue
        option = RouteTarget(target.provider_id, target.model, entry.weight, provider.keys)
        route_targets.append(option)
        by_id.setdefault(option.target_id, target)
    options = tuple(route_targets)
    return RouteChoices(options, MappingProxyType(by_id), fixed_plan(model.strategy, options))


def _compile_target(provider_id: str, model: str, providers: Mapping[str, CompiledProvider]) -> Target:
    provider = providers[provider_id]
    config = provider.config
    base_url = getattr(config, "base_url", None) or provider.spec.default_base_url or ""
    return Target(provider_id, config.type, model, base_url.rstrip("/"),
                  MappingProxyType(dict(config.headers)), config)


def _compile_client_key(config: ClientKeyConfig) -> ClientKey:
    secret = config.key.get_secret_value()
    if secret.startswith("sha256:"):
        digest = bytes.fromhex(secret[7:])
    else:
        digest = hashlib.sha256(secret.encode()).digest()
    allowed = compile_globs(config.models) if config.models is not None else None
    expires = config.expires
    expires_at = None
    if expires is not None:
        expires_at = expires.timestamp() if expires.tzinfo else expires.replace(tzinfo=UTC).timestamp()
    return ClientKey(config.id, digest, allowed, expires_at, config)


class StateHolder:
    """Holds the current snapshot. One writer (the reloader) swaps it; readers read once."""

    __slots__ = ("current", "loaded_at")

    def __init__(self, state: State) -> None:
        self.current = state
        self.loaded_at = time.time()

    def swap(self, state: State) -> State:
        previous, self.current = self.current, state
        self.loaded_at = time.time()
        return previous



