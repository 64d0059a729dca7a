"""`make bench`: TruckLLM measured against a bare aiohttp pass-through and against the
fake upstream called directly, in the same run, on this machine. See docs/performance.md.

Modules: processes (start, pin and watch child processes), targets (TruckLLM's config and
command), fake_upstream, reference_proxy,
loadgen (each a child process), runner (rounds and aggregation), report (markdown),
calls and profiled (Python calls per request under cProfile).
Nothing here is imported by truckllm.
"""
