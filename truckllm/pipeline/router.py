"""Pure choice of where one request goes: the alias's targets ordered by its strategy,
each expanded into its provider's keys chosen by weight, and the next candidate to try
after a failed attempt.

No I/O. Reads health (truckllm.pipeline.health) and a capacity callable; keeps its cursors in a
`Cursors` object that outlives config snapshots. Must not import dispatch, transport or
server code.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

from truckllm.limits.upstream import TargetId, upstream_ref
from truckllm.pipeline.health import Health
from truckllm.pipeline.retry import CAPACITY_RETRY_S, TARGET_FAILURES, ErrorClass

Strategy = Literal["fallback", "round_robin", "weighted", "least_busy", "lowest_latency"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

# (provider id, key id) -> the key is under its own rpm/tpm right now.
HasCapacity = Callable[[str, str], bool]
# (provider id, key id) -> seconds until it is under its rpm/tpm again; None: unknown.
CapacityWait = Callable[[str, str], float | None]


def always_has_capacity(provider_id: str, key_id: str) -> bool:
    return True


class WeightedKey(Protocol):
    """An upstream key as the router sees it (state's UpstreamKey fits)."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One target of an alias as the router sees it (compiled from config, once per
    snapshot: its id and its candidates are built here, not per request)."""

    provider_id: str
    model: str
    weight: float = 1.0
    keys: tuple[WeightedKey, ...] = ()     # empty for providers without keys (mock)
    target_id: TargetId = field(init=False)
    # One candidate per key, in key order (or one without a key): `plan` hands these out
    # rather than building new ones per request. Not compared: each points back here.
    candidates: tuple[Candidate, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_id", (self.provider_id, self.model))
        key_ids: list[str | None] = [k.id for k in self.keys] or [None]
        object.__setattr__(self, "candidates", tuple(Candidate(self, k) for k in key_ids))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (target, key) pair an attempt can use."""

    target: RouteTarget
    key_id: str | None
    key_ref: str | None = field(init=False)     # health's id for the key

    def __post_init__(self) -> None:
        ref = None if self.key_id is None else upstream_ref(self.target.provider_id, self.key_id)
        object.__setattr__(self, "key_ref", ref)


class Cursors:
    """Round-robin counters and smooth-weighted-round-robin credits, by name ("alias:x",
    "keys:provider"). Runtime state: one instance per process, kept across reloads."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._credits: dict[str, dict[str, float]] = {}

    def next_index(self, name: str) -> int:
        index = self._counters.get(name, 0)
        self._counters[name] = index + 1
        return index

    def pick_weighted(self, name: str, members: Sequence[tuple[str, float]]) -> str | None:
        """Smooth weighted round robin (nginx's): over any run of picks each member's share
        matches its weight, interleaved rather than in bursts. Zero weights never win."""
        weighted = [(member, weight) for member, weight in members if weight > 0]
        if not weighted:
            return None
        credits = self._credits.setdefault(name, {})
        for member, weight in weighted:
            credits[member] = credits.get(member, 0.0) + weight
        best = max(weighted, key=lambda pair: credits[pair[0]])[0]   # ties: the earlier
        credits[best] -= sum(weight for _, weight in weighted)
        return best

    def prune(self, names: Collection[str]) -> None:
        self._counters = {n: v for n, v in self._counters.items() if n in names}
        self._credits = {n: v for n, v in self._credits.items() if n in names}


class Routing:
    """The routing state one process keeps across reloads, held by the app."""

    __slots__ = ("adopted_version", "cursors", "health", "rng", "usable")

    def __init__(self, health: Health | None = None) -> None:
        self.health = health if health is not None else Health()
        self.cursors = Cursors()
        self.rng = random.Random()
        self.adopted_version = 0        # the config version health was set up for
        # Whether a candidate is usable when no upstream key has an rpm or tpm: health
        # alone. Built once rather than for every request that asks.
        self.usable: Callable[[Candidate], bool] = usability(self.health, always_has_capacity)


def cursor_names(aliases: Collection[str], provider_ids: Collection[str]) -> set[str]:
    """Every cursor name a config can use, for `Cursors.prune` after a reload."""
    return {f"alias:{a}" for a in aliases} | {f"keys:{p}" for p in provider_ids}


def plan(alias: str, strategy: Strategy, targets: Sequence[RouteTarget], cursors: Cursors,
         health: Health, has_capacity: HasCapacity = always_has_capacity) -> Sequence[Candidate]:
    """Every candidate for one request, most preferred first. Usable keys of a target come
    before its unusable ones; `next_candidate` skips what is unusable when it is tried."""
    fixed = fixed_plan(strategy, targets)
    if fixed is not None:
        return fixed
    ordered = (targets if _in_given_order(strategy, targets)
               else _order_targets(alias, strategy, targets, cursors, health, has_capacity))
    # One key pick per provider and request: two targets of the same provider (gpt-4o
    # falling back to gpt-4o-mini) must not each advance its key cursor, or the first
    # target would get the same key on every request.
    first_keys: dict[str, str | None] = {}
    if len(ordered) == 1:       # most aliases: the target's own candidates, no list built
        return _key_candidates(ordered[0], cursors, health, has_capacity, first_keys)
    return [candidate for target in ordered
            for candidate in _key_candidates(target, cursors, health, has_capacity, first_keys)]


def fixed_plan(strategy: Strategy, targets: Sequence[RouteTarget]) -> tuple[Candidate, ...] | None:
    """The plan of every request, when nothing at runtime can change it: targets tried in
    the given order, none with keys to choose between. Compiled once per snapshot (the
    route's choices carry it), so most requests never call `plan`; None otherwise."""
    if not _in_given_order(strategy, targets) or any(len(t.keys) > 1 for t in targets):
        return None
    return tuple(candidate for target in targets for candidate in target.candidates)


def _in_given_order(strategy: Strategy, targets: Sequence[RouteTarget]) -> bool:
    return len(targets) <= 1 or strategy == "fallback"


def _order_targets(alias: str, strategy: Strategy, targets: Sequence[RouteTarget],
                   cursors: Cursors, health: Health,
                   has_capacity: HasCapacity) -> list[RouteTarget]:
    """Two or more targets in the order a strategy other than fallback tries them."""
    name = f"alias:{alias}"
    if strategy == "weighted":
        usable = [t for t in targets if _target_usable(t, health, has_capacity)]
        first = cursors.pick_weighted(name, [(_target_name(t), t.weight) for t in usable])
        return _move_first(targets, first)
    rotated = _rotate(targets, cursors.next_index(name))
    if strategy == "round_robin":
        return rotated
    if strategy == "least_busy":
        return sorted(rotated, key=lambda t: health.in_flight(t.target_id))
    # lowest_latency: unmeasured targets first (to measure them), then fastest first.
    estimates = {t.target_id: health.latency_estimate(t.target_id) for t in targets}
    return sorted(rotated, key=lambda t: (estimates[t.target_id] is not None,
                                          estimates[t.target_id] or 0.0))


def _key_candidates(target: RouteTarget, cursors: Cursors, health: Health,
                    has_capacity: HasCapacity, first_keys: dict[str, str | None]) -> Sequence[Candidate]:
    if len(target.keys) <= 1:               # the common case: nothing to choose between
        return target.candidates
    usable = [k for k in target.keys if _key_usable(target.provider_id, k.id, health, has_capacity)]
    provider = target.provider_id
    if provider not in first_keys:
        first_keys[provider] = cursors.pick_weighted(f"keys:{provider}",
                                                     [(k.id, k.weight) for k in usable])
    first = first_keys[provider]
    rest = sorted((k for k in usable if k.id != first), key=lambda k: -k.weight)
    unusable = [k for k in target.keys if k not in usable]
    ordered_ids = ([first] if first else []) + [k.id for k in (*rest, *unusable)]
    by_id = {c.key_id: c for c in target.candidates}
    return [by_id[key_id] for key_id in ordered_ids]


def usability(health: Health, has_capacity: HasCapacity) -> Callable[[Candidate], bool]:
    """Whether a candidate is usable now (health allows it, its key is under its own
    rpm/tpm), as the callable `next_candidate` takes. Capacity is only asked about when
    some key has an rpm or tpm (`has_capacity` is not `always_has_capacity`)."""
    available = health.available
    check_capacity = has_capacity is not always_has_capacity

    def usable(candidate: Candidate) -> bool:
        if not available(candidate.target.target_id, candidate.key_ref):
            return False
        return (not check_capacity or candidate.key_id is None
                or has_capacity(candidate.target.provider_id, candidate.key_id))

    return usable


def next_candidate(candidates: Sequence[Candidate], tried: Sequence[Candidate],
                   last_error: ErrorClass | None,
                   usable: Callable[[Candidate], bool]) -> Candidate | None:
    """The candidate for the next attempt, or None when none is usable now.

    Untried candidates come first, in plan order; after a server error, timeout or
    connection failure, another target is preferred over another key of the same target
    (a 429 or 401 is about the key, so the next key of the same target comes first).
    Once every candidate was tried, a tried one that is still usable may go again.
    """
    # One pass, stopping at the first fit: usability is only asked of candidates in the
    # running (on a first attempt, of the first one alone).
    avoid = tried[-1].target.target_id if tried and last_error in TARGET_FAILURES else None
    same_target: Candidate | None = None     # the first untried usable one on `avoid`
    for candidate in candidates:
        if candidate in tried or not usable(candidate):
            continue
        if avoid is None or candidate.target.target_id != avoid:
            return candidate
        if same_target is None:
            same_target = candidate
    if same_target is not None:
        return same_target
    for candidate in candidates:
        if usable(candidate):
            return candidate
    return None


def earliest_recovery_s(candidates: Sequence[Candidate], health: Health,
                        has_capacity: HasCapacity = always_has_capacity,
                        capacity_wait: CapacityWait | None = None) -> float | None:
    """Seconds until some candidate is usable (0 if one is now); None if none will be
    before a reload. A key held back only by its own rpm/tpm is ready when `capacity_wait`
    says, or (not knowing) within a second or so."""
    waits: list[float] = []
    for c in candidates:
        wait = health.seconds_until_available(c.target.target_id, c.key_ref)
        if wait is None:
            continue
        if wait == 0 and c.key_id is not None and not has_capacity(c.target.provider_id, c.key_id):
            known = capacity_wait(c.target.provider_id, c.key_id) if capacity_wait else None
            wait = CAPACITY_RETRY_S if known is None or known <= 0 else known
        waits.append(wait)
    return min(waits) if waits else None


def _target_usable(target: RouteTarget, health: Health, has_capacity: HasCapacity) -> bool:
    if not health.target_available(target.target_id):
        return False
    return not target.keys or any(
        _key_usable(target.provider_id, k.id, health, has_capacity) for k in target.keys)


def _key_usable(provider_id: str, key_id: str, health: Health, has_capacity: HasCapacity) -> bool:
    return health.key_available(upstream_ref(provider_id, key_id)) and has_capacity(provider_id, key_id)


def _target_name(target: RouteTarget) -> str:
    return f"{target.provider_id}/{target.model}"


def _rotate(targets: Sequence[RouteTarget], index: int) -> list[RouteTarget]:
    start = index % len(targets)
    return [*targets[start:], *targets[:start]]


def _move_first(targets: Sequence[RouteTarget], first_name: str | None) -> list[RouteTarget]:
    if first_name is None:
        return list(targets)
    chosen = [t for t in targets if _target_name(t) == first_name][:1]
    return chosen + [t for t in targets if t not in chosen]
