"""One proxy alone in front of the fake upstream, started under a launcher (cProfile,
callgrind), and loads run against it: what the deterministic counts (bench.calls,
bench.instructions) share."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import orjson

from bench.processes import Child, cores, free_port, pin_self, start_child, wait_for_port
from bench.targets import ALIAS, CLIENT_KEY, UPSTREAM_MODEL, check_answers, truckllm_config

# The launcher gets the scratch directory (for its output) and returns the command
# prefix that runs a Python module: it is followed by the module and its arguments.
Launcher = Callable[[Path], list[str]]


class Alone(NamedTuple):
    proxy: Child
    port: int
    key: str
    model: str
    work: Path                  # scratch directory, removed when the proxy stops
    load_core: int | None


@contextmanager
def proxy_alone(kind: str, launcher: Launcher, start_timeout_s: float = 60.0,
                gap_ms: float = 1.0,
                edit_config: Callable[[str], str] | None = None) -> Iterator[Alone]:
    """`kind` ("reference" or "truckllm") running under `launcher`, pinned like the bench's
    proxies, answering (checked), with the fake upstream on the load core (`gap_ms`
    between the events of its streams). `edit_config` changes TruckLLM's generated config
    (limits, `state_url`)."""
    proxy_core, load_core = cores()
    with tempfile.TemporaryDirectory(prefix=f"truckllm-{kind}-") as scratch:
        work = Path(scratch)
        fake_port, port = free_port(), free_port()
        fake = start_child("fake", [sys.executable, "-m", "bench.fake_upstream", "--port", str(fake_port),
                            "--gap-ms", str(gap_ms)],
                           load_core, work)
        module, key, model = _module_command(kind, port, fake_port, work, edit_config)
        proxy = start_child(kind, [*launcher(work), *module], proxy_core, work)
        try:
            wait_for_port(fake, fake_port)
            wait_for_port(proxy, port, timeout_s=start_timeout_s)
            check_answers(port, key, model)
            yield Alone(proxy, port, key, model, work, load_core)
        finally:
            proxy.stop()
            fake.stop()


def run_load(alone: Alone, concurrency: int, duration_s: float, stream: bool = False,
             path: str = "/v1/chat/completions") -> int:
    """Requests answered by a load of `duration_s` seconds on `path` (the load generator
    pinned to the load core)."""
    result = alone.work / "load.json"
    load_core = alone.load_core
    subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--port", str(alone.port), "--key", alone.key,
         "--model", alone.model, "--concurrency", str(concurrency), "--duration", str(duration_s),
         "--path", path, "--out", str(result)] + (["--stream"] if stream else []),
        input=b"go\n", stdout=subprocess.DEVNULL, check=True, timeout=duration_s + 120,
        preexec_fn=(lambda: pin_self(load_core)) if load_core is not None else None,
    )
    return int(orjson.loads(result.read_bytes())["requests"])


def _module_command(kind: str, port: int, fake_port: int, work: Path,
                    edit_config: Callable[[str], str] | None) -> tuple[list[str], str, str]:
    """The module and arguments that run `kind`, and the key and model to ask it for."""
    if kind == "reference":
        return (["bench.reference_proxy", "--port", str(port), "--upstream", f"http://127.0.0.1:{fake_port}"],
                "none", UPSTREAM_MODEL)
    config = work / "config" / "bench.yaml"
    config.parent.mkdir(exist_ok=True)
    text = truckllm_config(port, fake_port)
    config.write_text(edit_config(text) if edit_config is not None else text)
    return ["truckllm", "serve", "-c", str(config), "--port", str(port)], CLIENT_KEY, ALIAS
