"""Runtime state of upstream keys and targets: one record per id, in one store.

Everything the gateway learns about an upstream key while it runs lives in that key's
`KeyRecord`: its health (cooldown, disabled, breaker), its traffic since start (attempts,
tokens, failures), its usage and spend since it first appeared (saved in the state file)
and its own rpm/tpm windows. A target (provider, upstream model) has a `TargetRecord`:
its breaker, in-flight count and time-to-first-token estimate. Health (the router's
questions and dispatch's reports) and the admin API read and write these records through
`UpstreamStore`, and the limiter counts upstream rpm/tpm, usage and spend through its
`refusal`, `acquire` and `settle`, so a key has one state, not three to merge. Health's
transitions (a failure counted towards a breaker, a key cooled or disabled, a half-open
breaker's trial taken, given back or closing it) are store operations, so that a shared
backend can make each one atomic on its server; the router's questions read the records,
which such a backend keeps as its local copy.

Records are keyed by stable ids ("provider/key", (provider, model)), never by config
snapshot, so they survive reloads; `retain` drops ids that are gone. No I/O; rate windows
read the store's clock, health's callers pass `now`. Must not import the pipeline or the
server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from truckllm.clock import Clock, SystemClock
from truckllm.limits.accounts import Counters
from truckllm.limits.estimate import PromptEstimate
from truckllm.limits.meter import RateMeter, Refusal, reconcile, reserve
from truckllm.usage import Usage

if TYPE_CHECKING:
    from truckllm.limits.policy import RateLimits

TargetId = tuple[str, str]              # (provider id, upstream model)
# Whose breaker a health transition is about: an upstream key (its ref) or a target.
Subject = str | TargetId
# What `acquire` hands back for `settle`: the store's own reservation (the in-memory
# store's is a `Held` of window entries); () when nothing is held.
Hold = tuple[Any, ...]

# Longest a key or target is skipped, however often it kept failing.
MAX_COOLDOWN_FACTOR = 10


def upstream_ref(provider_id: str, key_id: str) -> str:
    """The stable id of an upstream key (`provider/key`): health, limits and logs use it."""
    return f"{provider_id}/{key_id}"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The routing settings health depends on; replaced on reload."""

    cooldown_s: float = 30.0            # a 429 without Retry-After, or an opened breaker
    breaker_failures: int = 3           # consecutive failures that open a breaker ...
    breaker_window_s: float = 60.0      # ... when they fall within this window

    @property
    def max_cooldown_s(self) -> float:
        return self.cooldown_s * MAX_COOLDOWN_FACTOR


@dataclass(slots=True)
class Breaker:
    """Closed -> (N failures in the window) open -> (after cooldown) half-open: one trial
    request; its success closes the breaker, its failure opens it again for longer."""

    failures: deque[float] = field(default_factory=deque)
    open_until: float | None = None
    openings: int = 0                   # consecutive, so each reopening lasts longer
    trial_taken: bool = False

    def is_open(self, now: float) -> bool:
        return self.open_until is not None and now < self.open_until

    def is_half_open(self, now: float) -> bool:
        return self.open_until is not None and now >= self.open_until

    def allows(self, now: float) -> bool:
        if self.open_until is None:
            return True
        return now >= self.open_until and not self.trial_taken

    def claim_trial(self, now: float) -> bool:
        """Take the one trial of a half-open breaker, if it is half-open and untaken."""
        if self.open_until is None or self.trial_taken or now < self.open_until:
            return False
        self.trial_taken = True
        return True

    def on_success(self) -> None:
        # Idempotent: a closed breaker with no failures (open_until None implies no trial
        # and no openings) is left as it is, so callers may skip the call then.
        self.failures.clear()
        self.open_until = None
        self.openings = 0
        self.trial_taken = False

    def on_failure(self, now: float, settings: HealthSettings) -> None:
        if self.is_half_open(now):
            self._open(now, settings)
            return
        while self.failures and now - self.failures[0] > settings.breaker_window_s:
            self.failures.popleft()
        self.failures.append(now)
        if len(self.failures) >= settings.breaker_failures:
            self._open(now, settings)

    def _open(self, now: float, settings: HealthSettings) -> None:
        self.openings += 1
        cooldown = settings.cooldown_s * 2 ** (self.openings - 1)
        self.open_until = now + min(cooldown, settings.max_cooldown_s)
        self.failures.clear()
        self.trial_taken = False

    def recent_failures(self, now: float, settings: HealthSettings) -> int:
        return sum(1 for at in self.failures if now - at <= settings.breaker_window_s)


@dataclass(slots=True)
class KeyRecord:
    """One upstream key: its health, traffic, usage and rate windows."""

    # health: read by the router, written by attempts and probes
    breaker: Breaker = field(default_factory=Breaker)
    cooldown_until: float = 0.0         # monotonic; set by 429s
    rate_limit_streak: int = 0
    disabled: bool = False              # 401/403 from upstream, until the next reload
    # (monotonic time, message) of the latest failure that counts against the key's
    # health: told to a client whose request found every candidate cooling
    last_failure: tuple[float, str] | None = None
    # traffic since the process started (GET /admin/v1/providers)
    requests: int = 0                   # attempts sent with the key
    tokens: int = 0                     # tokens of its answers
    errors: int = 0                     # failed attempts
    last_error: str | None = None       # the reason of the latest failure: "429", "timeout"
    # usage and spend since the key first appeared: saved in the state file
    usage: Counters = field(default_factory=Counters)
    # the key's own rpm/tpm windows (only filled for a key that has one)
    meter: RateMeter = field(default_factory=RateMeter)


@dataclass(slots=True)
class TargetRecord:
    """One target (provider, upstream model): its breaker, load and speed."""

    breaker: Breaker = field(default_factory=Breaker)
    in_flight: int = 0
    ttft_s: float | None = None
    ttft_at: float = 0.0
    last_failure: tuple[float, str] | None = None     # as KeyRecord's


class UpstreamStore(Protocol):
    """Where the records live. The in-memory store below is one process's; a shared backend
    implements the same methods (see docs/dev/state.md)."""

    changes: int            # moves on every change of saved usage (the state file saver)

    def refusal(self, ref: str, rates: RateLimits, estimate: PromptEstimate) -> Refusal | None:
        """Why one more request of `estimate` tokens sent with `ref` would break its own
        rpm/tpm (`rates`, which has one); None if it fits. The router asks this of every
        candidate key: a shared backend may answer from the state it saw last."""
        ...

    async def acquire(self, ref: str, rates: RateLimits,
                      estimate: PromptEstimate) -> Hold | Refusal:
        """Count one request sent with `ref` in its usage and, for the rpm/tpm `rates` has,
        in its windows; the reservation returned is what `settle` replaces. For a key with
        an rpm or tpm this is a check-and-count: a shared backend returns the `Refusal`
        (counting nothing) when another instance took the key's capacity since the
        router asked `refusal`; the in-memory store never refuses (nothing can come
        between the router's question and this)."""
        ...

    def count(self, ref: str) -> None:
        """`acquire` for a key without rpm or tpm: one request counted in its usage, no
        window to check or hold, so nothing to wait for."""
        ...

    async def settle(self, ref: str, held: Hold, usage: Usage | None, cost_usd: float) -> None:
        """Replace `held` with the real usage (None: never reported, the estimate stays)
        and add usage and spend to the key's saved usage."""
        ...

    def add_usage(self, ref: str, usage: Usage | None, cost_usd: float) -> None:
        """`settle` of a use that holds nothing (`held` is ()): no reservation to replace,
        usage and spend added to the key's saved usage at once, nothing to wait for."""
        ...

    def key(self, ref: str) -> KeyRecord:
        """The record of upstream key `ref`, made empty on first use."""
        ...

    def find_key(self, ref: str) -> KeyRecord | None:
        """The record of `ref` if it was ever used; None otherwise (nothing is made)."""
        ...

    def target(self, target: TargetId) -> TargetRecord:
        """The record of `target`, made empty on first use."""
        ...

    def find_target(self, target: TargetId) -> TargetRecord | None:
        ...

    def targets(self) -> Iterator[tuple[TargetId, TargetRecord]]:
        ...

    def target_count(self) -> int:
        ...

    def forget_targets(self, keep: Collection[TargetId]) -> None:
        """Drop every target record not in `keep` (bounds memory under wildcard aliases)."""
        ...

    def retain(self, refs: Collection[str], provider_ids: Collection[str] | None = None) -> None:
        """After a reload: drop keys that are gone, and targets of providers that are gone
        (None: targets are kept)."""
        ...

    def usage_snapshot(self) -> dict[str, Any]:
        """Usage and spend of every key, JSON-able (the state file's `upstream_keys`)."""
        ...

    # -- health transitions (the rules deciding when are truckllm.pipeline.health's) -----

    def breaker_failed(self, subject: Subject, now: float, settings: HealthSettings) -> None:
        """Count a failure against the breaker of `subject`: it opens when `settings`
        say so, and a failure while half-open opens it again, for longer."""
        ...

    def breaker_closed(self, subject: Subject) -> None:
        """A success through `subject`: its breaker closes and its failures are forgotten.
        Only asked when the record shows an opened breaker or failures."""
        ...

    def claim_trial(self, subject: Subject, now: float) -> bool:
        """Take the one trial of the half-open breaker of `subject`, as far as this process
        knows; the attempt then asks `confirm_trial` before it is sent."""
        ...

    async def confirm_trial(self, subject: Subject) -> bool:
        """Whether the trial `claim_trial` took is this process's to run: False when
        another instance holds it or opened the breaker again (the claim is then given up).
        A shared backend checks and takes it in one atomic step."""
        ...

    def release_trial(self, subject: Subject) -> None:
        """Give back a trial taken and not run (cancelled, or a 429 that says nothing of
        the breaker), so that another attempt may take it."""
        ...

    def cool_key(self, ref: str, until: float) -> None:
        """Skip key `ref` until `until` (monotonic), or longer if it already is."""
        ...

    def disable_key(self, ref: str) -> None:
        """Upstream rejected key `ref`: skip it until `enable_keys` (a reload)."""
        ...

    def enable_keys(self, refs: Collection[str]) -> None:
        """A reload: keys upstream rejected are tried again (their value may be fixed)."""
        ...

    def restore_usage(self, usage: dict[str, Counters]) -> None:
        """Replace the saved usage of these keys (the rest of their records is kept)."""
        ...


class MemoryUpstreamStore:
    """The records of one process, in dicts."""

    __slots__ = ("_keys", "_targets", "changes", "clock")

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.changes = 0
        self._keys: dict[str, KeyRecord] = {}
        self._targets: dict[TargetId, TargetRecord] = {}

    def refusal(self, ref: str, rates: RateLimits, estimate: PromptEstimate) -> Refusal | None:
        return self.key(ref).meter.refusal(rates, estimate, self.clock.monotonic())

    async def acquire(self, ref: str, rates: RateLimits,
                      estimate: PromptEstimate) -> Hold | Refusal:
        record = self.key(ref)
        record.usage.requests += 1
        self.changes += 1
        if not rates.windowed:
            return ()
        return reserve(record.meter, rates, estimate, self.clock.monotonic())

    def count(self, ref: str) -> None:
        (self._keys.get(ref) or self.key(ref)).usage.requests += 1
        self.changes += 1

    async def settle(self, ref: str, held: Hold, usage: Usage | None, cost_usd: float) -> None:
        if usage is not None and held:
            reconcile(held, usage, self.clock.monotonic())
        self.key(ref).usage.add_usage(usage, cost_usd)
        self.changes += 1

    def add_usage(self, ref: str, usage: Usage | None, cost_usd: float) -> None:
        (self._keys.get(ref) or self.key(ref)).usage.add_usage(usage, cost_usd)
        self.changes += 1

    def key(self, ref: str) -> KeyRecord:
        record = self._keys.get(ref)
        if record is None:
            record = self._keys[ref] = KeyRecord()
        return record

    def find_key(self, ref: str) -> KeyRecord | None:
        return self._keys.get(ref)

    def target(self, target: TargetId) -> TargetRecord:
        record = self._targets.get(target)
        if record is None:
            record = self._targets[target] = TargetRecord()
        return record

    def find_target(self, target: TargetId) -> TargetRecord | None:
        return self._targets.get(target)

    def targets(self) -> Iterator[tuple[TargetId, TargetRecord]]:
        return iter(list(self._targets.items()))

    def target_count(self) -> int:
        return len(self._targets)

    def forget_targets(self, keep: Collection[TargetId]) -> None:
        self._targets = {tid: record for tid, record in self._targets.items() if tid in keep}

    def retain(self, refs: Collection[str], provider_ids: Collection[str] | None = None) -> None:
        self._keys = {ref: record for ref, record in self._keys.items() if ref in refs}
        if provider_ids is not None:
            self._targets = {tid: record for tid, record in self._targets.items()
                             if tid[0] in provider_ids}

    def usage_snapshot(self) -> dict[str, Any]:
        return {ref: record.usage.as_dict() for ref, record in self._keys.items()}

    def restore_usage(self, usage: dict[str, Counters]) -> None:
        for ref, counters in usage.items():
            self.key(ref).usage = counters

    def breaker(self, subject: Subject) -> Breaker:
        """The breaker of a key (`subject` is its ref) or of a target."""
        if isinstance(subject, str):
            return self.key(subject).breaker
        return self.target(subject).breaker

    def breaker_failed(self, subject: Subject, now: float, settings: HealthSettings) -> None:
        self.breaker(subject).on_failure(now, settings)

    def breaker_closed(self, subject: Subject) -> None:
        self.breaker(subject).on_success()

    def claim_trial(self, subject: Subject, now: float) -> bool:
        return self.breaker(subject).claim_trial(now)

    async def confirm_trial(self, subject: Subject) -> bool:
        return True         # one process: nothing can have come between

    def release_trial(self, subject: Subject) -> None:
        self.breaker(subject).trial_taken = False

    def cool_key(self, ref: str, until: float) -> None:
        record = self.key(ref)
        record.cooldown_until = max(record.cooldown_until, until)

    def disable_key(self, ref: str) -> None:
        self.key(ref).disabled = True

    def enable_keys(self, refs: Collection[str]) -> None:
        for ref in refs:
            record = self._keys.get(ref)
            if record is not None:
                record.disabled = False
