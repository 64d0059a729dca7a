"""Rate limits, concurrency, budgets, cost and the usage that survives restarts.

    policy    config -> LimitsPolicy (compiled once per config snapshot)
    window    exact sliding-log rate window
    meter     rpm/tpm windows + in-flight count for one subject
    limiter   the rules: Limiter.admit -> Admission (finish, or settle and release);
              upstream-key rpm/tpm and usage; messages, headers, reports
    clients   the client store: windows, slots, usage and spend of client keys and the
              gateway; `admit` is the one check-and-count (docs/dev/state.md)
    upstream  the upstream store: one record per upstream key (health, traffic, usage,
              windows) and per target; shared by routing health and the limiter
    accounts  usage and spend counters and their JSON form
    metering  the server's side: admit before dispatch, finish when the response ends
    estimate  prompt-token estimate reserved before the call (worked out when first read)
    cost      Usage x pricing -> CostBreakdown; `price`: the same with prices compiled
    budget    calendar budget periods (UTC)
    headers   x-ratelimit-* values
    persist   the state file and its saver

Must not import the server, dispatch or transport.
"""

from truckllm.clock import Clock, ManualClock, SystemClock
from truckllm.limits.cost import CostBreakdown, CostLine, cost_of
from truckllm.limits.estimate import NO_PROMPT, PromptEstimate, estimate_prompt_tokens
from truckllm.limits.limiter import (
    Admission,
    BudgetExceeded,
    Limiter,
    LimitScope,
    RateLimitExceeded,
    UpstreamUse,
)
from truckllm.limits.persist import StateSaver, load_state, state_file_path
from truckllm.limits.policy import KeyPolicy, LimitsPolicy, RateLimits, compile_policy
from truckllm.limits.upstream import upstream_ref

__all__ = [
    "NO_PROMPT",
    "Admission",
    "BudgetExceeded",
    "Clock",
    "CostBreakdown",
    "CostLine",
    "KeyPolicy",
    "LimitScope",
    "Limiter",
    "LimitsPolicy",
    "ManualClock",
    "PromptEstimate",
    "RateLimitExceeded",
    "RateLimits",
    "StateSaver",
    "SystemClock",
    "UpstreamUse",
    "compile_policy",
    "cost_of",
    "estimate_prompt_tokens",
    "load_state",
    "state_file_path",
    "upstream_ref",
]
