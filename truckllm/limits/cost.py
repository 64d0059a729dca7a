"""What a request cost: its real usage priced by its alias's `pricing`, line by line.

Pure. Prices are USD per million tokens. `Usage.prompt_tokens` includes cache reads and
writes (as OpenAI counts them), so those are split out and priced at their own rates,
falling back to the input price when a cache rate is not configured.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypedDict

from truckllm.config.schema import PricingConfig
from truckllm.usage import Usage

PER_MTOK = 1_000_000


class CostLine(TypedDict):
    """One kind of token priced, already in the shape logs and the admin API show, so
    nothing converts it for each access line. Read-only by convention, like the record
    that carries it."""

    kind: str               # input | cache_read | cache_write | output
    tokens: int
    usd_per_mtok: float
    usd: float


class CostBreakdown(NamedTuple):
    total_usd: float
    lines: tuple[CostLine, ...]

    def as_log(self) -> dict[str, Any]:
        """The numbers the total came from, for a log line: tokens by kind x rate."""
        return {"cost_usd": self.total_usd, "cost_lines": list(self.lines)}


FREE = CostBreakdown(0.0, ())


class Prices(NamedTuple):
    """An alias's `pricing` as requests are priced: USD per million tokens of each kind,
    the cache rates' fallback to the input rate worked out. Compiled once per config
    snapshot (truckllm.limits.policy keeps them)."""

    input: float
    cache_read: float
    cache_write: float
    output: float


def prices_of(pricing: PricingConfig) -> Prices:
    read, write = pricing.cache_read_per_mtok, pricing.cache_write_per_mtok
    return Prices(input=pricing.input_per_mtok,
                  cache_read=pricing.input_per_mtok if read is None else read,
                  cache_write=pricing.input_per_mtok if write is None else write,
                  output=pricing.output_per_mtok)


def cost_of(usage: Usage | None, pricing: PricingConfig | None) -> CostBreakdown:
    """The cost of one request's usage; FREE when either is unknown."""
    if usage is None or pricing is None:
        return FREE
    return CostBreakdown(*price(usage, prices_of(pricing)))


def price(usage: Usage, prices: Prices) -> tuple[float, tuple[CostLine, ...]]:
    """The total and the lines of one request's usage at `prices`, kinds without tokens
    left out. The total adds the lines in order, as `sum()` of them would."""
    prompt = usage.prompt_tokens
    # Cached tokens are part of the prompt: never more of them than the prompt has.
    cache_read = min(usage.cache_read_tokens, prompt)
    cache_write = min(usage.cache_write_tokens, prompt - cache_read)
    kinds = (("input", prompt - cache_read - cache_write, prices.input),
             ("cache_read", cache_read, prices.cache_read),
             ("cache_write", cache_write, prices.cache_write),
             ("output", usage.completion_tokens, prices.output))
    lines: list[CostLine] = []
    total_usd: float = 0
    for kind, tokens, rate in kinds:
        if tokens:
            usd = tokens * rate / PER_MTOK
            lines.append({"kind": kind, "tokens": tokens, "usd_per_mtok": rate, "usd": usd})
            total_usd += usd
    return total_usd, tuple(lines)
