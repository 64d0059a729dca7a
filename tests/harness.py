"""The one test harness: the real TruckLLM app in-process on a real port, built from a
config (dict or YAML text) in front of the fakes in tests/fakes/, and a real
`truckllm serve` process. Config builders, ports, clocks and waits live here too, so test
modules never import from each other.

Everything binds 127.0.0.1 on a free port and writes only under the directory a test
passes (its `tmp_path`), so tests run in parallel workers (pytest-xdist).
Factories start with make_ (the async process one is run_serve_process)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import logging
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from signal import SIGTERM
from typing import Any

import aiohttp
import httpx
import orjson
import structlog
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI, DefaultAsyncHttpxClient, DefaultHttpxClient, OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.anthropic_fake import AnthropicFake, make_anthropic_fake
from tests.fakes.azure_fake import AzureFake, make_azure_fake
from tests.fakes.gemini_fake import GeminiFake, make_gemini_fake
from tests.fakes.openai_fake import OpenAIFake
from tests.forked_serve import ForkedServe, start_serve
from tests.ports import free_port
from truckllm.clock import Clock
from truckllm.config.loader import load_bytes, load_file
from truckllm.limits import Limiter
from truckllm.pipeline.router import Routing
from truckllm.runtime.state import StateHolder, build_state
from truckllm.server.app import create_app
from truckllm.server.keys import LIMITER, OPS, ROUTING

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT_KEY = "tk-test-client-key-0001"
ADMIN_KEY = "admin-secret-1"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]

START_LIMIT_S = 20.0
STOP_LIMIT_S = 20.0
WAIT_LIMIT_S = 15.0

# The tests' SDK clients talk plain HTTP to 127.0.0.1, yet each would build its own TLS
# context from the whole CA bundle (about 20 ms of CPU, and a run makes hundreds of
# clients): they share this one, through the SDK's own HTTP client class.
TLS = ssl.create_default_context()


def sdk_http() -> httpx.AsyncClient:
    """The HTTP client for an async openai SDK client (`http_client=`)."""
    return DefaultAsyncHttpxClient(verify=TLS)


def sdk_sync_http() -> httpx.Client:
    """The HTTP client for a sync openai SDK client (`http_client=`)."""
    return DefaultHttpxClient(verify=TLS)


def imported_on_first_use(name: str) -> Any:
    """The module `name`, imported when a test first reads one of its attributes. Every
    test worker imports every test module to collect the tests, so an SDK imported at the
    top of a module is paid for by all of them (the anthropic SDK: about a second of CPU
    each), though only the workers that run its tests need it. A module uses it as
    `if TYPE_CHECKING: import anthropic` / `else: anthropic = imported_on_first_use(...)`."""
    return _ImportedOnFirstUse(name)


class _ImportedOnFirstUse:
    # Not importlib.util.LazyLoader: collecting a test module reads attributes of every
    # name in it (`__class__`, `__wrapped__`, `_mock_name`), which would load the module at
    # once. Here only the public names a test uses import it.
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self._name), attribute)


# --- Configs -------------------------------------------------------------------------

def make_config(upstream_url: str | None = None, **sections: Any) -> dict[str, Any]:
    """A config with a mock provider, an openai provider at `upstream_url` if given,
    aliases `demo` (mock), `gpt` (openai: gpt-4o-mini), `openai/*`, and one client key;
    `sections` replace top-level sections."""
    providers: list[dict[str, Any]] = [{"id": "demo", "type": "mock"}]
    models: list[dict[str, Any]] = [{"alias": "demo", "targets": [{"provider": "demo", "model": "mock-1"}]}]
    if upstream_url:
        providers.append({"id": "up", "type": "openai", "base_url": upstream_url,
                          "keys": [{"id": "k1", "value": "sk-upstream-secret-1"}]})
        models += [
            {"alias": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
            {"alias": "embed", "targets": [{"provider": "up", "model": "text-embedding-3-small"}]},
            {"alias": "openai/*", "targets": [{"provider": "up", "model": "*"}]},
        ]
    config: dict[str, Any] = {
        "version": 1,
        "server": {"log_level": "warning"},
        "providers": providers,
        "models": models,
        "keys": [{"id": "team", "key": CLIENT_KEY}],
    }
    config.update(sections)
    return config


def yaml_text(config: Mapping[str, Any]) -> str:
    """`config` as YAML, written by libyaml (what yaml.safe_dump writes, a few times faster)."""
    return yaml.dump(dict(config), Dumper=yaml.CSafeDumper)


def write_config(directory: Path, config: Mapping[str, Any] | str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(config if isinstance(config, str) else yaml_text(config))
    return path


EXTRA_HEADERS = {"x-team": "truck-test"}      # a provider's `headers:`, sent with every request
UPSTREAM_KEYS = {"claude": "sk-ant-upstream-1", "google": "gm-upstream-1", "az": "az-upstream-1"}


def providers_config(anthropic_url: str, gemini_url: str, azure_url: str) -> dict[str, Any]:
    """Anthropic, Gemini and Azure providers (and an openai one on the Azure fake's v1 path)
    with an alias per operation; the config of `make_stack`."""
    def keys(provider: str) -> list[dict[str, str]]:
        return [{"id": "k1", "value": UPSTREAM_KEYS[provider]}]

    providers = [
        {"id": "claude", "type": "anthropic", "base_url": anthropic_url, "keys": keys("claude"),
         "headers": EXTRA_HEADERS},
        {"id": "google", "type": "gemini", "base_url": gemini_url, "keys": keys("google"),
         "headers": EXTRA_HEADERS},
        {"id": "az", "type": "azure", "base_url": azure_url, "keys": keys("az"), "headers": EXTRA_HEADERS},
        {"id": "az1", "type": "azure", "base_url": azure_url + "/openai/v1", "keys": keys("az")},
        {"id": "oai", "type": "openai", "base_url": azure_url + "/openai/v1", "keys": keys("az")},
        {"id": "oai-xlate", "type": "openai", "base_url": azure_url + "/openai/v1", "keys": keys("az"),
         "responses": "chat"},
        {"id": "demo", "type": "mock"},
    ]
    models = [
        {"alias": "claude", "targets": [{"provider": "claude", "model": "claude-sonnet-4-5"}]},
        {"alias": "claude-or-gem", "targets": [{"provider": "claude", "model": "claude-sonnet-4-5"},
                                               {"provider": "google", "model": "gemini-2.5-flash"}]},
        {"alias": "gem", "targets": [{"provider": "google", "model": "gemini-2.5-flash"}]},
        {"alias": "gem-embed", "targets": [{"provider": "google", "model": "gemini-embedding-001"}]},
        {"alias": "az", "targets": [{"provider": "az", "model": "gpt4o-deploy"}]},
        {"alias": "az-v1", "targets": [{"provider": "az1", "model": "gpt4o-deploy"}]},
        {"alias": "az-embed", "targets": [{"provider": "az", "model": "embed-deploy"}]},
        {"alias": "az-whisper", "targets": [{"provider": "az", "model": "whisper-deploy"}]},
        {"alias": "az-tts", "targets": [{"provider": "az", "model": "tts-deploy"}]},
        {"alias": "az-image", "targets": [{"provider": "az", "model": "image-deploy"}]},
        {"alias": "oai-chat", "targets": [{"provider": "oai", "model": "gpt-4o"}]},
        {"alias": "oai-translated", "targets": [{"provider": "oai-xlate", "model": "gpt-4o"}]},
        {"alias": "native-rr", "strategy": "round_robin",
         "targets": [{"provider": "az", "model": "gpt4o-deploy"}, {"provider": "oai", "model": "gpt-4o"}]},
        {"alias": "oai-then-gem", "targets": [{"provider": "oai", "model": "gpt-4o"},
                                              {"provider": "google", "model": "gemini-2.5-flash"}]},
        {"alias": "oai-embed", "targets": [{"provider": "oai", "model": "text-embedding-3-small"}]},
        {"alias": "oai-whisper", "targets": [{"provider": "oai", "model": "whisper-1"}]},
        {"alias": "demo", "targets": [{"provider": "demo", "model": "mock-1"}]},
        # Dated ids as Claude Code sends them: the `*` is passed on to the upstream.
        {"alias": "claude-*", "targets": [{"provider": "claude", "model": "claude-*"}]},
    ]
    return make_config(providers=providers, models=models)


# The variables a `serve_config` refers to; run_serve_process passes them to the process.
SERVE_ENV = {
    "ADMIN_KEY": "adm-7f3c9e1b5d-secret",
    "TEAM_KEY": "team-a-4b8d2f6a0c-secret",
    "MOCK_KEY": "mock-upstream-9e5a1c-secret",
    "OPENAI_KEY": "sk-upstream-env-3d7b1f-secret",
}
LITERAL_SECRET = "sk-literal-backup-8c2e4a-secret"      # written into the file itself
SECRETS = [*SERVE_ENV.values(), LITERAL_SECRET]


def serve_config(port: int, *, aliases: tuple[str, ...] = ("demo",), watch: bool = True,
                 admin: bool = True, admin_listen: str | None = None,
                 openai_url: str | None = None, chunk_delay_ms: float = 0,
                 extra_server: str = "") -> str:
    """YAML text for `truckllm serve` on `port`, its secrets as ${VAR}s from SERVE_ENV (one
    literal); kept as text because tests compare the file byte for byte after admin writes."""
    server = [f"port: {port}", f"watch: {str(watch).lower()}"]
    if admin:
        server.append("admin_api_key: ${ADMIN_KEY}")
    if admin_listen:
        server.append(f"admin_listen: '{admin_listen}'")
    if extra_server:
        server.append(extra_server)
    providers = [
        "  - id: demo\n    type: mock\n"
        f"    chunk_delay_ms: {chunk_delay_ms}\n"
        "    keys: [{id: k1, value: \"${MOCK_KEY}\"}]",
    ]
    models = [f"  - alias: {alias}\n    targets: [{{provider: demo, model: echo}}]" for alias in aliases]
    if openai_url:
        providers.append(
            "  - id: openai\n    type: openai\n"
            f"    base_url: {openai_url}\n"
            "    keys:\n"
            "      - {id: main, value: \"${OPENAI_KEY}\"}\n"
            f"      - {{id: backup, value: {LITERAL_SECRET}, weight: 0}}")
        models.append("  - alias: gpt\n    targets: [{provider: openai, model: gpt-4o-mini}]")
    return "\n".join([
        "version: 1",
        "server:", *[f"  {line}" for line in server],
        "providers:", *providers,
        "models:", *models,
        "keys:",
        "  - {id: team-a, key: \"${TEAM_KEY}\"}",
        "",
    ])


def two_providers(one: str, two: str, *, routing: str = "", alias_extra: str = "",
                  provider_extra: str = "", more_models: str = "") -> str:
    """Alias `chat` over two openai providers: p1 (keys sk-one, sk-two) at `one`, p2 (sk-three)
    at `two`; no client keys. The routing tests' config, as text they edit."""
    return f"""
version: 1
providers:
  - id: p1
    type: openai
    base_url: {one}
    keys: [{{id: k1, value: sk-one}}, {{id: k2, value: sk-two}}]
{provider_extra}
  - id: p2
    type: openai
    base_url: {two}
    keys: [{{id: k1, value: sk-three}}]
{provider_extra}
models:
  - alias: chat
    targets: [{{provider: p1, model: m1}}, {{provider: p2, model: m2}}]
{alias_extra}
{more_models}
routing:
  cooldown_s: 30
{routing}
"""


def one_key_each(config: str) -> str:
    return config.replace("[{id: k1, value: sk-one}, {id: k2, value: sk-two}]", "[{id: k1, value: sk-one}]")


def keys_used(fake: OpenAIFake) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in fake.requests]


def write_replacing(path: Path, text: str) -> None:
    """How editors and Kubernetes write: a new file renamed over the old one."""
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    os.replace(temp, path)


# --- Waits ----------------------------------------------------------------------

async def wait_until(check: Callable[[], bool | Awaitable[bool]], what: str = "a condition",
                     limit_s: float = WAIT_LIMIT_S) -> None:
    """Polls `check` (plain or async) until it is true; fails the test after `limit_s`."""
    async def poll() -> None:
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), limit_s)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for: {what}") from None


# --- The app in-process --------------------------------------------------------------

@dataclass
class Gateway:
    """The real app on a real port; `url` ends in /v1, `root` is http://127.0.0.1:PORT."""
    url: str
    root: str
    app: web.Application
    clock: Clock | None = None          # the runtime-state clock, when the test drives it
    # SDK clients handed out, closed when the gateway stops: one left open is closed by
    # the garbage collector later, on a loop that is gone, and logs a traceback into
    # whichever test happens to be running then.
    clients: list[Any] = field(default_factory=list)     # openai or anthropic, sync or async

    def client(self, key: str = CLIENT_KEY, **options: Any) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=self.url, api_key=key,
                             **{"max_retries": 0, "timeout": 10, "http_client": sdk_http(), **options})
        self.clients.append(client)
        return client

    def sync_client(self, key: str = CLIENT_KEY, **options: Any) -> OpenAI:
        client = OpenAI(base_url=self.url, api_key=key,
                        **{"max_retries": 0, "http_client": sdk_sync_http(), **options})
        self.clients.append(client)
        return client

    def http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(base_url=self.root, timeout=aiohttp.ClientTimeout(total=10))

    @property
    def limiter(self) -> Limiter:
        return self.app[LIMITER]

    @property
    def routing(self) -> Routing:
        return self.app[ROUTING]

    async def chat(self, model: str = "chat") -> ChatCompletion:
        return await self.client().chat.completions.create(model=model, messages=MESSAGES)

    async def raw_chat(self, model: str = "chat") -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                f"{self.url}/chat/completions", json={"model": model, "messages": MESSAGES},
                timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, dict(response.headers), await response.read()

    async def raw_stream(self, model: str = "chat") -> bytes:
        body = {"model": model, "messages": MESSAGES, "stream": True}
        async with aiohttp.ClientSession() as session, session.post(
                f"{self.url}/chat/completions", json=body,
                timeout=aiohttp.ClientTimeout(total=10)) as response:
            assert response.status == 200
            return await response.read()

    async def admin(self, method: str, path: str, key: str | None = ADMIN_KEY) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.request(method, self.root + path, headers=headers) as response:
            return response.status, await response.json()

    async def reload(self, key: str = ADMIN_KEY) -> None:
        """Reloads the config file through the admin API (needs `directory` and an admin key)."""
        status, body = await self.admin("POST", "/admin/v1/reload", key)
        assert status == 200 and body["reloaded"] is True, body

    @contextmanager
    def log_lines(self) -> Iterator[list[dict[str, Any]]]:
        """The JSON log lines (access lines included) written inside the block, read from
        the log stream the gateway writes to; the list is filled when the block ends."""
        stream = io.StringIO()
        self.app[OPS].configure_logging(stream)
        lines: list[dict[str, Any]] = []
        try:
            yield lines
        finally:
            lines.extend(orjson.loads(line) for line in stream.getvalue().splitlines())
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()


@asynccontextmanager
async def make_gateway(config: Mapping[str, Any] | str, *, directory: Path | None = None,
                       clock: Clock | None = None, env: Mapping[str, str] | None = None,
                       name: str = "config.yaml") -> AsyncIterator[Gateway]:
    """The app built from `config` (a dict or YAML text), served on a free port.
    `directory`: the config is written there as `name` and loaded from the file (what the
    state file and admin writes sit beside); `clock` (a ManualClock): the clock of runtime
    state (limits, budgets, cooldowns, breakers), so a test moves time without sleeping."""
    if directory is not None:
        loaded = load_file(write_config(directory, config, name), env=dict(env or {}))
    else:
        raw = (config if isinstance(config, str) else yaml_text(config)).encode()
        loaded = load_bytes(raw, "test.yaml", env or {})
    app = create_app(StateHolder(build_state(loaded, 1)), clock=clock)
    # As `truckllm serve` runs it: a client that hangs up cancels its handler.
    server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
    await server.start_server()
    root = str(server.make_url("")).rstrip("/")
    gateway = Gateway(root + "/v1", root, app, clock)
    try:
        yield gateway
    finally:
        for client in gateway.clients:
            closing = client.close()
            if inspect.isawaitable(closing):
                await closing
        await server.close()


@dataclass
class Stack:
    """The app in front of fake Anthropic, Gemini and Azure upstreams (`providers_config`)."""
    gateway: Gateway
    anthropic: AnthropicFake
    gemini: GeminiFake
    azure: AzureFake

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def root(self) -> str:
        return self.gateway.root

    @property
    def clients(self) -> list[Any]:
        """SDK clients closed when the stack stops."""
        return self.gateway.clients


@asynccontextmanager
async def make_stack() -> AsyncIterator[Stack]:
    async with make_anthropic_fake() as anthropic, make_gemini_fake() as gemini, \
            make_azure_fake() as azure, \
            make_gateway(providers_config(anthropic.url, gemini.url, azure.url)) as gateway:
        yield Stack(gateway, anthropic, gemini, azure)


def make_openai_client(stack: Stack) -> AsyncOpenAI:
    """An SDK client for the stack's gateway, closed with the stack."""
    return stack.gateway.client()


# --- A real `truckllm serve` process -------------------------------------------------

@dataclass
class ServeProcess:
    """`truckllm serve` running from this checkout; its output goes to `log_path`."""
    process: ForkedServe
    port: int
    config_path: Path
    log_path: Path
    admin_port: int | None = None
    _http: aiohttp.ClientSession | None = None      # set by run_serve_process
    clients: list[AsyncOpenAI] = field(default_factory=list)    # closed when it stops

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}" if self.admin_port else self.root

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "HTTP helpers need run_serve_process"
        return self._http

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, sig: int | None = None, timeout: float = STOP_LIMIT_S) -> int:
        """Sends `sig` (SIGTERM by default) unless it has exited, and returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(SIGTERM if sig is None else sig)
        return self.process.wait(timeout=timeout)

    async def stopped(self, sig: int | None = None) -> int:
        return await asyncio.to_thread(self.stop, sig)

    def openai_client(self, key: str, timeout_s: float = 20) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=timeout_s,
                             http_client=sdk_http())
        self.clients.append(client)
        return client

    def admin_headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {SERVE_ENV['ADMIN_KEY'] if key is None else key}"}

    async def admin(self, method: str, path: str, *, key: str | None = None,
                    data: bytes | None = None) -> tuple[int, Any, str]:
        async with self.http.request(method, self.admin_url + path, data=data,
                                     headers=self.admin_headers(key)) as response:
            text = await response.text()
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                body = None
            return response.status, body, text

    async def get(self, path: str, base: str | None = None) -> tuple[int, str]:
        async with self.http.get((base or self.root) + path) as response:
            return response.status, await response.text()

    async def status(self) -> dict[str, Any]:
        code, body, _ = await self.admin("GET", "/admin/v1/status")
        assert code == 200, body
        result: dict[str, Any] = body
        return result

    async def model_ids(self) -> set[str]:
        async with self.http.get(self.url + "/models",
                                 headers={"Authorization": f"Bearer {SERVE_ENV['TEAM_KEY']}"}) as response:
            body = orjson.loads(await response.read())
            return {entry["id"] for entry in body["data"]}


def serve_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a `truckllm serve` a test starts: this checkout first on the
    path, SERVE_ENV, then `env`. No CA bundle: these processes speak plain HTTP to fakes
    on 127.0.0.1, yet aiohttp loads the system's bundle into two TLS contexts as it is
    imported, about 40 ms of CPU, a tenth of the start of a command line
    (tests/e2e/test_workers.py starts a dozen)."""
    return {**os.environ, **SERVE_ENV, "PYTHONPATH": str(REPO_ROOT), "SSL_CERT_FILE": os.devnull,
            **(env or {})}


def _start(config_path: Path, port: int | None, admin_port: int | None,
           env: Mapping[str, str] | None) -> ServeProcess:
    """Starts the process (forked, tests/forked_serve.py): on `port` as the config says,
    or, without one, on a free port given on the command line."""
    args = ["serve", "-c", str(config_path)]
    if port is None:
        port = free_port()
        args += ["--port", str(port)]
    log_path = config_path.with_suffix(".log")
    process = start_serve(args, env=serve_env(env), cwd=config_path.parent, log_path=log_path)
    return ServeProcess(process, port, config_path, log_path, admin_port)


def _wait_healthy(running: ServeProcess, limit_s: float = START_LIMIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"truckllm exited early:\n{running.output()}")
        try:
            with urllib.request.urlopen(f"{running.root}/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"truckllm did not become healthy:\n{running.output()}")


def _kill(running: ServeProcess) -> None:
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=10)


@contextmanager
def make_serve_process(config_path: Path, port: int | None = None, *,
                       admin_port: int | None = None,
                       env: Mapping[str, str] | None = None) -> Iterator[ServeProcess]:
    """`truckllm serve` for a synchronous test; waits until /health answers, kills it on exit."""
    running = _start(config_path, port, admin_port, env)
    try:
        _wait_healthy(running)
        yield running
    finally:
        _kill(running)


@asynccontextmanager
async def run_serve_process(config_path: Path, port: int | None = None, *,
                            admin_port: int | None = None,
                            env: Mapping[str, str] | None = None) -> AsyncIterator[ServeProcess]:
    """`truckllm serve` for an async test, with an HTTP session for its helpers; on exit
    SIGTERM (if still running), then a kill if it does not stop in time."""
    running = _start(config_path, port, admin_port, env)
    try:
        await asyncio.to_thread(_wait_healthy, running)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_LIMIT_S)) as http:
            running._http = http
            try:
                yield running
            finally:
                for client in running.clients:
                    await client.close()
                with suppress(subprocess.TimeoutExpired):
                    await running.stopped()
    finally:
        _kill(running)


@asynccontextmanager
async def use_serve_process(running: ServeProcess) -> AsyncIterator[ServeProcess]:
    """A process several tests share (a module fixture starts it with make_serve_process)
    with the HTTP helpers of run_serve_process, for one async test; it keeps running."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_LIMIT_S)) as http:
        view = replace(running, _http=http, clients=[])
        try:
            yield view
        finally:
            for client in view.clients:
                await client.close()


def client_for(gateway: ServeProcess, key: str | None = None) -> AsyncOpenAI:
    """An SDK client of the process, as team-a unless `key` is given."""
    return gateway.openai_client(key or SERVE_ENV["TEAM_KEY"])


async def metric_samples(gateway: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = await gateway.get("/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def provider_keys(gateway: ServeProcess) -> dict[str, dict[str, object]]:
    code, body, _ = await gateway.admin("GET", "/admin/v1/providers")
    assert code == 200, body
    return {f"{p['id']}/{k['id']}": k for p in body["providers"] for k in p["keys"]}


# --- Checks --------------------------------------------------------------------------

def check_stream_invariants(chunks: list[Any], include_usage: bool) -> None:
    """What the official SDKs silently rely on, for every translated stream."""
    payloads = [c for c in chunks if "_usage_seen" not in c and "error" not in c]
    chat = [c for c in payloads if c.get("object") == "chat.completion.chunk"]
    if chat and chat[0]["choices"]:
        assert chat[0]["choices"][0]["delta"].get("role") == "assistant", "the first chunk carries the role"
    roles = [c for c in chat for ch in c["choices"] if "role" in ch["delta"]]
    indices = {ch["index"] for c in chat for ch in c["choices"]}
    assert len(roles) == len(indices) or not chat, "role is sent once per choice"
    assert len({chunk["id"] for chunk in payloads}) <= 1, "one id for the whole stream"
    seen_calls: set[tuple[int, int]] = set()
    finished: set[int] = set()
    for chunk in payloads:
        for choice in chunk["choices"]:
            assert choice["index"] not in finished, "nothing follows a choice's finish_reason"
            if choice.get("finish_reason"):
                # chat only: OpenAI's own text_completion streams put text and finish together
                assert choice.get("delta", {}) == {}, "finish_reason comes alone"
                finished.add(choice["index"])
            for call in choice.get("delta", {}).get("tool_calls") or []:
                key = (choice["index"], call["index"])
                if key in seen_calls:
                    assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}, \
                        "later tool-call deltas carry only argument fragments"
                else:
                    assert call.get("id") and call.get("type") == "function" and call["function"].get("name")
                    seen_calls.add(key)
    usage_chunks = [c for c in payloads if not c["choices"]]
    if include_usage and not any("error" in c for c in chunks):
        assert len(usage_chunks) == 1 and payloads[-1] is usage_chunks[0], "one usage chunk, last"
    if not include_usage:
        assert not usage_chunks and all("usage" not in c for c in payloads), "no usage unless asked"
