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


# An alias's `pricing` as requests are priced: USD per million input, cache-read,
# cache-write and output tokens, the cache rates' fallback to the input rate worked out.
# Compiled once per config snapshot (truckllm.limits.policy keeps them); a plain tuple,
# which unpacks faster than a named one.
Prices = tuple[float, float, float, float]


def prices_of(pricing: PricingConfig) -> Prices:
    read, write = pricing.cache_read_per_mtok, pricing.cache_write_per_mtok
    return (pricing.input_per_mtok, pricing.input_per_mtok if read is None else read,
            pricing.input_per_mtok if write is None else write, pricing.output_per_mtok)


def cost_of(usage: Usage | None, pricing: PricingConfig | None) -> CostBreakdown:
    """The cost of one request's usage; FREE when either is unknown."""
    if usage is None or pricing is None:
        return FREE
    return CostBreakdown(*price(usage, prices_of(pricing)))


def price(usage: Usage, prices: Prices) -> tuple[float, tuple[CostLine, ...]]:
    """The total and the lines of `cost_of`, for the hot path: `prices` compiled already.

    Written out kind by kind because it runs for every priced request (see `cost_of` for
    the plain form). The total adds the lines in order from int 0, exactly as `sum()` of
    them would, so both give the same figure to the last digit.
    """
    input_rate, read_rate, write_rate, output_rate = prices
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if prompt and completion and not (usage.cache_read_tokens or usage.cache_write_tokens):
        # Most answers: input and output, nothing cached. Their two lines, as below.
        input_usd = prompt * input_rate / PER_MTOK
        output_usd = completion * output_rate / PER_MTOK
        return input_usd + output_usd, (
            {"kind": "input", "tokens": prompt, "usd_per_mtok": input_rate, "usd": input_usd},
            {"kind": "output", "tokens": completion, "usd_per_mtok": output_rate,
             "usd": output_usd})
    # cached tokens are part of the prompt: never more of them than the prompt has
    cache_read = usage.cache_read_tokens
    if prompt < cache_read:
        cache_read = prompt
    cache_write = usage.cache_write_tokens
    if prompt - cache_read < cache_write:
        cache_write = prompt - cache_read
    plain_input = prompt - cache_read - cache_write
    lines: list[CostLine] = []      # empty kinds left out
    total_usd: float = 0
    if plain_input:
        usd = plain_input * input_rate / PER_MTOK
        lines.append({"kind": "input", "tokens": plain_input, "usd_per_mtok": input_rate, "usd": usd})
        total_usd += usd
    if cache_read:
        usd = cache_read * read_rate / PER_MTOK
        lines.append({"kind": "cache_read", "tokens": cache_read, "usd_per_mtok": read_rate, "usd": usd})
        total_usd += usd
    if cache_write:
        usd = cache_write * write_rate / PER_MTOK
        lines.append({"kind": "cache_write", "tokens": cache_write, "usd_per_mtok": write_rate, "usd": usd})
        total_usd += usd
    if completion:
        usd = completion * output_rate / PER_MTOK
        lines.append({"kind": "output", "tokens": completion, "usd_per_mtok": output_rate, "usd": usd})
        total_usd += usd
    return total_usd, tuple(lines)

