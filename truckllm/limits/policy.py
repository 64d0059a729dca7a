"""The limits part of a config, compiled once per config snapshot for the hot path.

Pure: built from a validated Config, read by truckllm.limits.limiter. Holds no counters
(those live in the Limiter and survive reloads); a reload just compiles a new policy.
The derived flags (`windowed`, `limited`, `limits_upstream`) are worked out here once, so
that admitting a request of a key with nothing limited is one question, not six.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from truckllm.config.schema import Config, PricingConfig
from truckllm.limits.budget import BudgetPeriod
from truckllm.limits.cost import Prices, prices_of
from truckllm.limits.upstream import upstream_ref


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-minute request and token limits and a concurrency cap; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    windowed: bool = field(init=False, repr=False, compare=False)   # an rpm or tpm is set
    limited: bool = field(init=False, repr=False, compare=False)    # any of the three is set

    def __post_init__(self) -> None:
        windowed = self.rpm is not None or self.tpm is not None
        object.__setattr__(self, "windowed", windowed)
        object.__setattr__(self, "limited", windowed or self.max_concurrent is not None)

    def as_dict(self) -> dict[str, int | None]:
        return {"rpm": self.rpm, "tpm": self.tpm, "max_concurrent": self.max_concurrent}


NO_LIMITS = RateLimits()


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What one client key may do."""

    key_id: str
    rates: RateLimits = NO_LIMITS
    budget_usd: float | None = None
    budget_period: BudgetPeriod = "total"
    # Responses carry x-ratelimit-* headers for keys with an rpm or tpm.
    sends_headers: bool = field(init=False, repr=False, compare=False)
    # Admission has something to check: a rate, a concurrency cap or a budget.
    limited: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sends_headers", self.rates.windowed)
        object.__setattr__(self, "limited", self.rates.limited or self.budget_usd is not None)


@dataclass(frozen=True, slots=True, eq=False)
class LimitsPolicy:
    gateway: RateLimits = NO_LIMITS
    keys: Mapping[str, KeyPolicy] = field(default_factory=dict)
    upstream: Mapping[str, RateLimits] = field(default_factory=dict)   # upstream_ref -> limits
    pricing: Mapping[str, PricingConfig] = field(default_factory=dict)  # config alias -> prices
    # Some upstream key has an rpm or tpm; without one, dispatch needs no capacity checks.
    limits_upstream: bool = field(init=False, repr=False)
    prices: Mapping[str, Prices] = field(init=False, repr=False)    # `pricing`, compiled
    # Some tpm is set (gateway, a client key, an upstream key): admission and dispatch read
    # prompt estimates. Without one only a stream does (see truckllm.limits.estimate).
    tpm_limited: bool = field(init=False, repr=False)
    # The keys whose responses carry x-ratelimit-* headers (`sends_headers`), by id: auth
    # looks a key up here, and most keys are not in it.
    sending_headers: Mapping[str, KeyPolicy] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits_upstream",
                           any(rates.windowed for rates in self.upstream.values()))
        rates = [self.gateway, *(key.rates for key in self.keys.values()),
                 *self.upstream.values()]
        object.__setattr__(self, "tpm_limited", any(r.tpm is not None for r in rates))
        object.__setattr__(self, "prices",
                           {alias: prices_of(pricing) for alias, pricing in self.pricing.items()})
        object.__setattr__(self, "sending_headers",
                           {key_id: key for key_id, key in self.keys.items() if key.sends_headers})

    def key(self, key_id: str) -> KeyPolicy:
        found = self.keys.get(key_id)
        return found if found is not None else KeyPolicy(key_id)


def compile_policy(config: Config) -> LimitsPolicy:
    gateway = config.limits
    return LimitsPolicy(
        gateway=RateLimits(gateway.rpm, gateway.tpm, gateway.max_concurrent) if gateway else NO_LIMITS,
        keys={
            key.id: KeyPolicy(
                key_id=key.id,
                rates=RateLimits(key.rpm, key.tpm, key.max_concurrent),
                budget_usd=key.budget_usd,
                budget_period=key.budget_period or "total",
            )
            for key in config.keys or []
        },
        upstream={
            upstream_ref(provider.id, key.id): RateLimits(key.rpm, key.tpm)
            for provider in config.providers
            for key in provider.keys
        },
        pricing={model.alias: model.pricing for model in config.models if model.pricing},
    )
