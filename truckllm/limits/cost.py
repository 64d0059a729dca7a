"""What a request cost: its real usage priced by its alias's `pricing`, line by line.

Pure. Prices are USD per million tokens. `Usage.prompt_tokens` includes cache reads and
writes (as OpenAI counts them), so those are split out and priced at their own rates,
falling back to the input price when a cache rate is not configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from truckllm.config.schema import PricingConfig
from truckllm.usage import Usage

PER_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class CostLine:
    kind: str               # input | cache_read | cache_write | output
    tokens: int
    usd_per_mtok: float
    usd: float


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    total_usd: float
    lines: tuple[CostLine, ...]

    def as_log(self) -> dict[str, Any]:
        """The numbers the total came from, for a log line: tokens by kind x rate."""
        return {
            "cost_usd": self.total_usd,
            "cost_lines": [
                {"kind": line.kind, "tokens": line.tokens,
                 "usd_per_mtok": line.usd_per_mtok, "usd": line.usd}
                for line in self.lines
            ],
        }


FREE = CostBreakdown(0.0, ())


def cost_of(usage: Usage | None, pricing: PricingConfig | None) -> CostBreakdown:
    """The cost of one request's usage; FREE when either is unknown."""
    if usage is None or pricing is None:
        return FREE
    cache_read = min(usage.cache_read_tokens, usage.prompt_tokens)
    cache_write = min(usage.cache_write_tokens, usage.prompt_tokens - cache_read)
    plain_input = usage.prompt_tokens - cache_read - cache_write
    rates = (
        ("input", plain_input, pricing.input_per_mtok),
        ("cache_read", cache_read, _or(pricing.cache_read_per_mtok, pricing.input_per_mtok)),
        ("cache_write", cache_write, _or(pricing.cache_write_per_mtok, pricing.input_per_mtok)),
        ("output", usage.completion_tokens, pricing.output_per_mtok),
    )
    lines = tuple(CostLine(kind, tokens, rate, tokens * rate / PER_MTOK)
                  for kind, tokens, rate in rates if tokens)
    return CostBreakdown(sum(line.usd for line in lines), lines)


def _or(rate: float | None, fallback: float) -> float:
    return fallback if rate is None else rate
