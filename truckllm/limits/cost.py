"""What a request cost: its real usage priced by its alias's `pricing`, line by line.

Pure. Prices are USD per million tokens. `Usage.prompt_tokens` includes cache reads and
writes (as OpenAI counts them), so those are split out and priced at their own rates,
falling back to the input price when a cache rate is not configured.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, NamedTuple

from truckllm.config.schema import PricingConfig
from truckllm.usage import Usage

PER_MTOK = 1_000_000


# Named tuples, not frozen dataclasses: both are built for every priced request, and a
# tuple is made in one step where a frozen dataclass sets each field by object.__setattr__.


class CostLine(NamedTuple):
    kind: str               # input | cache_read | cache_write | output
    tokens: int
    usd_per_mtok: float
    usd: float

    def as_log(self) -> dict[str, Any]:
        """The line as logs and the admin API show it: `_asdict()`'s keys and values, built
        as one literal (it is rendered on every priced request's access line)."""
        kind, tokens, usd_per_mtok, usd = self
        return {"kind": kind, "tokens": tokens, "usd_per_mtok": usd_per_mtok, "usd": usd}


class CostBreakdown(NamedTuple):
    total_usd: float
    lines: tuple[CostLine, ...]

    def as_log(self) -> dict[str, Any]:
        """The numbers the total came from, for a log line: tokens by kind x rate."""
        return {
            "cost_usd": self.total_usd,
            "cost_lines": [line.as_log() for line in self.lines],
        }


FREE = CostBreakdown(0.0, ())


def cost_of(usage: Usage | None, pricing: PricingConfig | None) -> CostBreakdown:
    """The cost of one request's usage; FREE when either is unknown."""
    if usage is None or pricing is None:
        return FREE
    prompt = usage.prompt_tokens
    # min() by hand: a builtin call costs more than the rest of this arithmetic
    cache_read = usage.cache_read_tokens
    if prompt < cache_read:
        cache_read = prompt
    cache_write = usage.cache_write_tokens
    if prompt - cache_read < cache_write:
        cache_write = prompt - cache_read
    plain_input = prompt - cache_read - cache_write
    input_rate = pricing.input_per_mtok
    lines = []
    if plain_input:
        lines.append(_line("input", plain_input, input_rate))
    if cache_read:
        lines.append(_line("cache_read", cache_read, _or(pricing.cache_read_per_mtok, input_rate)))
    if cache_write:
        lines.append(_line("cache_write", cache_write,
                           _or(pricing.cache_write_per_mtok, input_rate)))
    if usage.completion_tokens:
        lines.append(_line("output", usage.completion_tokens, pricing.output_per_mtok))
    return CostBreakdown(sum(map(_USD, lines)), tuple(lines))     # empty kinds left out


_USD = attrgetter("usd")


def _line(kind: str, tokens: int, usd_per_mtok: float) -> CostLine:
    return CostLine(kind, tokens, usd_per_mtok, tokens * usd_per_mtok / PER_MTOK)


def _or(rate: float | None, fallback: float) -> float:
    return fallback if rate is None else rate
