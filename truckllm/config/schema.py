"""The config file's schema: frozen pydantic models, unknown fields rejected.

Providers are a discriminated union on `type`. Validators here check shape only; checks
that span sections (unknown provider ids, duplicates) live in truckllm.config.checks.
Every field carries a description: docs/configuration.md is tested to name each one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from truckllm.config.globs import check_glob


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OtelConfig(Strict):
    endpoint: str = Field(pattern=r"^https?://[^\s/]+", description="OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318`; spans go to `<endpoint>/v1/traces`.")
    service_name: str = Field("truckllm", min_length=1, description="`service.name` of the spans.")


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    max_body_mb: float = Field(32, gt=0, description="Largest request body accepted, in MiB; larger bodies get 413.")
    body_timeout_s: float = Field(60, gt=0, description="Time allowed to receive a request's body once its headers have arrived; past it the request gets 408 and the connection is closed.")
    keepalive_timeout_s: float = Field(75, gt=0, description="How long a client connection may stay open without a request: idle between requests, or still sending the headers of one. Applies at the next start.")
    max_connections: int | None = Field(None, ge=1, description="Most client connections held at once on each listener; one more is answered 503 and closed. Absent: half the process's open-file limit. Applies at the next start.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    log_format: Literal["json", "console"] = Field("json", description="json: one JSON object per line; console: coloured, for humans.")
    shutdown_grace_s: float = Field(30, ge=0, description="On SIGTERM/SIGINT, how long in-flight requests and streams may take to finish.")
    admin_api_key: SecretStr | None = Field(None, description="Bearer token for the admin API (/admin/v1/...); the admin API is off (404) when empty or absent.")
    metrics: bool = Field(True, description="Serve Prometheus metrics on GET /metrics (no auth, like any exporter).")
    admin_listen: str | None = Field(None, description="Optional `host:port` serving the admin API and /metrics only there, never on the main listener.")
    watch: bool = Field(True, description="Reload the config when its file changes on disk.")
    request_log_size: int = Field(1000, ge=0, le=1_000_000, description="How many recent requests GET /admin/v1/logs keeps in memory.")
    otel: OtelConfig | None = Field(None, description="Send OpenTelemetry traces (OTLP/HTTP): a span per request and one per upstream attempt. Absent: no tracing, and the OpenTelemetry SDK is not loaded.")
    state_file: str | None = Field(None, min_length=1, description="Where usage and spend are saved across restarts; relative paths are beside the config file. Default `<config file name>.state.json` beside the config.")
    state_url: SecretStr | None = Field(None, description="A Redis (or Valkey) server that holds the rate windows, concurrency slots, usage and spend of every instance naming it, so several instances (or `--workers`) enforce one set of limits: `redis://host:6379/0`, `rediss://` for TLS, `unix:///path/redis.sock`. It replaces the state file (whose spend is imported once). Applies at the next start.")
    state_failure: Literal["open", "closed"] = Field("open", description="While `state_url` is unreachable: `open` serves requests with each instance enforcing the limits on its own; `closed` answers 503 to requests of keys with limits or budgets (and every request when the gateway has limits).")

    @field_validator("state_url")
    @classmethod
    def _state_url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        # The URL may carry a password: the message never repeats it.
        if value is not None and not re.fullmatch(r"(redis|rediss|unix)://\S+",
                                                  value.get_secret_value()):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("admin_listen")
    @classmethod
    def _listen_is_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value


def split_host_port(value: str) -> tuple[str, int]:
    """`127.0.0.1:8081`, `[::1]:8081` or `localhost:8081` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8081")
    return host.removeprefix("[").removesuffix("]"), int(port)


class ProviderKey(Strict):
    id: str = Field(min_length=1, description="Stable name of this upstream key (logs, metrics, admin API).")
    value: SecretStr = Field(description="The upstream API key, usually `${ENV_VAR}`.")
    weight: float = Field(1, ge=0, description="Share of first choices this key gets among the provider's keys; 0: only an in-request fallback when the others are cooling down, at their limit or failed.")
    rpm: int | None = Field(None, ge=0, description="The upstream's requests-per-minute limit for this key; TruckLLM skips the key while it is at the limit.")
    tpm: int | None = Field(None, ge=0, description="The upstream's tokens-per-minute limit for this key (prompt estimate, then real usage); TruckLLM skips the key while it is at the limit.")


class ProviderBase(Strict):
    id: str = Field(min_length=1, description="Name targets use to refer to this provider.")
    timeout_s: float = Field(120, gt=0, description="Total time allowed for one upstream request, streams included.")
    connect_timeout_s: float = Field(10, gt=0, description="Time allowed to open a connection to the upstream; past it the attempt fails as `connect`.")
    first_byte_timeout_s: float | None = Field(None, gt=0, description="Time allowed until the response starts (headers for a plain request, the first event of a stream); absent means only `timeout_s` bounds it. Set it to fail over from a hung upstream quickly, but above the longest answer you expect for non-streamed requests.")
    idle_timeout_s: float = Field(60, gt=0, description="Longest silence allowed between two chunks of a stream once it has started; a stalled stream is ended with an error event and its upstream connection closed.")
    health_check_interval_s: float | None = Field(None, gt=0, description="When set, probe each key this often with a free request (`GET /models` or equivalent, never a completion); absent means health is judged from real traffic only.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent upstream on every request.")
    max_event_mb: float = Field(8, gt=0, description="Largest single event of an upstream stream, in MiB (comment lines included); a larger one fails the attempt as an upstream error, so an event that never ends cannot hold memory without bound.")


class OpenAIProvider(ProviderBase):
    type: Literal["openai"] = Field(description="OpenAI or any OpenAI-compatible server (vLLM, Ollama, Groq, ...).")
    base_url: str = Field("https://api.openai.com/v1", description="API root, including `/v1` where the server uses it.")
    keys: list[ProviderKey] = Field(min_length=1, description="Upstream API keys; requests are spread over them by weight.")
    responses: Literal["native", "chat"] = Field("native", description="How POST /v1/responses reaches this provider: `native` passes it to the upstream's own /responses (an upstream that answers 404 there is translated through chat from then on), `chat` always translates it through chat completions.")


class MockProvider(ProviderBase):
    type: Literal["mock"] = Field(description="Built-in deterministic provider: no network, no credentials.")
    keys: list[ProviderKey] = Field(default_factory=list, description="Optional; the mock ignores them.")
    latency_ms: float = Field(0, ge=0, description="Delay before the answer (before the first chunk when streaming).")
    chunk_delay_ms: float = Field(0, ge=0, description="Delay between streamed chunks.")
    embedding_dim: int = Field(256, ge=1, le=8192, description="Length of the vectors the mock's embeddings return.")


class AnthropicProvider(ProviderBase):
    type: Literal["anthropic"] = Field(description="Anthropic Messages API; chat completions are translated both ways.")
    base_url: str = Field("https://api.anthropic.com/v1", description="API root including `/v1`; requests go to `{base_url}/messages`.")
    keys: list[ProviderKey] = Field(min_length=1, description="Upstream API keys, sent as `x-api-key`; requests are spread over them by weight.")
    anthropic_version: str = Field("2023-06-01", description="Value of the `anthropic-version` header.")
    default_max_tokens: int = Field(4096, ge=1, description="`max_tokens` sent when the client gives none (Anthropic requires it).")


class GeminiProvider(ProviderBase):
    type: Literal["gemini"] = Field(description="Google Gemini API (AI Studio keys); chat and embeddings are translated both ways.")
    base_url: str = Field("https://generativelanguage.googleapis.com/v1beta", description="API root including the version; requests go to `{base_url}/models/{model}:generateContent`.")
    keys: list[ProviderKey] = Field(min_length=1, description="Upstream API keys, sent as `x-goog-api-key`; requests are spread over them by weight.")


class AzureProvider(ProviderBase):
    type: Literal["azure"] = Field(description="Azure OpenAI; a target's `model` is the deployment name.")
    base_url: str = Field(min_length=1, description="Resource endpoint (`https://NAME.openai.azure.com`) for deployment URLs, or an URL ending in `/openai/v1` for Azure's v1 API.")
    api_version: str = Field("2024-10-21", min_length=1, description="`api-version` query parameter of deployment URLs (unused with `/openai/v1`).")
    keys: list[ProviderKey] = Field(min_length=1, description="Upstream API keys, sent as `api-key`; requests are spread over them by weight.")
    responses: Literal["native", "chat"] = Field("native", description="How POST /v1/responses reaches this provider: `native` passes it to Azure's `/openai/v1/responses` (an upstream that answers 404 there is translated through chat from then on), `chat` always translates it through chat completions.")


ProviderConfig = Annotated[
    OpenAIProvider | AnthropicProvider | GeminiProvider | AzureProvider | MockProvider,
    Field(discriminator="type"),
]


class TargetConfig(Strict):
    provider: str = Field(description="Id of a provider in `providers`.")
    model: str = Field(min_length=1, description="Upstream model name; in the targets of a wildcard alias, `*` is replaced by what the alias's `*` matched.")
    weight: float = Field(1, ge=0, description="Share of traffic for this target under the `weighted` strategy (0: only when the others are unusable).")


class PricingConfig(Strict):
    input_per_mtok: float = Field(ge=0, description="USD per million prompt tokens that are not cache reads or writes.")
    output_per_mtok: float = Field(ge=0, description="USD per million completion tokens.")
    cache_read_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens read from the provider's cache; absent means the input price.")
    cache_write_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens written to the provider's cache; absent means the input price.")


class ModelConfig(Strict):
    alias: str = Field(min_length=1, description="The model name clients send; one `*` anywhere (`openai/*`, `claude-*`, `*-fast`) makes a wildcard alias.")
    targets: list[TargetConfig] = Field(min_length=1, description="Where requests for this alias go, in order.")
    strategy: Literal["fallback", "round_robin", "weighted", "least_busy", "lowest_latency"] = Field(
        "fallback", description="How targets are ordered per request: `fallback` (in the order written), `round_robin`, `weighted` (by target `weight`), `least_busy` (fewest requests in flight), `lowest_latency` (recent time to first token).")
    fallback_on_context_overflow: str | None = Field(None, description="Alias tried when an upstream says the prompt is too long for the model; absent means the error goes back to the client.")

    pricing: PricingConfig | None = Field(None, description="What this alias costs, used for spend, budgets and `llm_cost_usd_total`; absent means requests cost 0.")
    context_window: int | None = Field(None, ge=1, description="The model's context length in tokens, shown in /v1/models.")


RetryOn = Annotated[int, Field(ge=400, le=599)] | Literal["timeout", "connect"]


def _default_retry_on() -> list[int | Literal["timeout", "connect"]]:
    return [429, 500, 502, 503, 504, 529, "timeout", "connect"]


class RoutingConfig(Strict):
    max_attempts: int = Field(3, ge=1, le=20, description="Most upstream attempts for one request, across targets and keys, all before the first byte reaches the client.")
    retry_on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        description="Upstream statuses (400-599) and `timeout` / `connect` failures after which another attempt is made; an upstream 401/403 always moves to another key.")
    cooldown_s: float = Field(30, gt=0, le=3600, description="How long a rate-limited key (without Retry-After) or a key/target whose breaker opened is skipped; doubles on repeated failures, up to 10 times this. At most 3600 (an hour).")
    wait_for_recovery_ms: float = Field(0, ge=0, description="When every target is cooling down, wait up to this long for the first to recover instead of answering 503 at once.")
    breaker_failures: int = Field(3, ge=1, description="Consecutive server errors, timeouts or connection failures that open the breaker of a key or target.")
    breaker_window_s: float = Field(60, gt=0, description="The failures counted by `breaker_failures` must fall within this many seconds.")


class ClientKeyConfig(Strict):
    id: str = Field(min_length=1, description="Stable name of this client key (logs, metrics, admin API).")
    key: SecretStr = Field(description="The key clients send, or `sha256:<hex>` of it to keep only a hash.")
    models: list[str] | None = Field(None, description="Glob allow-list of aliases this key may use; absent means every alias.")
    expires: datetime | None = Field(None, description="When the key stops working (ISO 8601, UTC if no zone).")
    rpm: int | None = Field(None, ge=0, description="Requests this key may make in any 60 seconds; absent means no limit.")
    tpm: int | None = Field(None, ge=0, description="Tokens this key may use in any 60 seconds (prompt estimate, then real usage); absent means no limit.")
    max_concurrent: int | None = Field(None, ge=0, description="Requests and streams this key may have in flight at once; absent means no limit.")
    budget_usd: float | None = Field(None, ge=0, description="Spend allowed per budget period, in USD; over it the key gets 403 `budget_exceeded`. Absent means no budget.")
    budget_period: Literal["daily", "weekly", "monthly", "total"] | None = Field(None, description="Budget period: calendar day, week (from Monday) or month in UTC, or `total` (never resets). Default `total`.")

    @field_validator("models")
    @classmethod
    def _globs_are_valid(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            check_glob(pattern)
        return patterns


class LimitsConfig(Strict):
    rpm: int | None = Field(None, ge=0, description="Requests the whole gateway admits in any 60 seconds; absent means no limit.")
    tpm: int | None = Field(None, ge=0, description="Tokens the whole gateway admits in any 60 seconds; absent means no limit.")
    max_concurrent: int | None = Field(None, ge=0, description="Requests and streams in flight at once across all keys; absent means no limit.")


class ResponsesConfig(Strict):
    store: str = Field("responses.db", min_length=1, description="Where /v1/responses keeps responses for `previous_response_id` and GET/DELETE /v1/responses/{id}: a SQLite file (relative paths are beside the config file; a config that came from no file keeps them in memory), `memory`, or `off`. With `server.state_url` (anything but `off`) they are kept in Redis, shared by every instance. Read at start-up; a change needs a restart.")
    ttl_days: float = Field(30, gt=0, description="How long a stored response is kept, in days.")


class Config(Strict):
    version: Literal[1] = Field(description="Config format version; always 1.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Listener and process settings.")
    providers: list[ProviderConfig] = Field(min_length=1, description="Upstream providers and their keys.")
    models: list[ModelConfig] = Field(min_length=1, description="Aliases clients can ask for and their targets.")
    keys: list[ClientKeyConfig] | None = Field(None, description="Client keys; absent means the API is open (a warning is logged).")
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="Attempts, retries, cooldowns and breakers across targets and keys.")
    limits: LimitsConfig | None = Field(None, description="Gateway-wide limits, checked for every request in addition to the key's own.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="The response store of the Responses API (POST /v1/responses).")
