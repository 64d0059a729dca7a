"""The config file's schema: frozen pydantic models, unknown fields rejected.

Providers are a discriminated union on `type`. Validators here check shape only; checks
that span sections (unknown provider ids, duplicates) live in truckllm.config.checks.
Every field carries a description: docs/configuration.md is tested to name each one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from truckllm.config.globs import check_glob


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    max_body_mb: float = Field(32, gt=0, description="Largest request body accepted, in MiB; larger bodies get 413.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    log_format: Literal["json", "console"] = Field("json", description="json: one JSON object per line; console: coloured, for humans.")
    shutdown_grace_s: float = Field(30, ge=0, description="On SIGTERM/SIGINT, how long in-flight requests and streams may take to finish.")


class ProviderKey(Strict):
    id: str = Field(min_length=1, description="Stable name of this upstream key (logs, metrics, admin API).")
    value: SecretStr = Field(description="The upstream API key, usually `${ENV_VAR}`.")
    weight: float = Field(1, ge=0, description="Share of traffic this key gets among the provider's keys.")


class ProviderBase(Strict):
    id: str = Field(min_length=1, description="Name targets use to refer to this provider.")
    timeout_s: float = Field(120, gt=0, description="Total time allowed for one upstream request, streams included.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent upstream on every request.")


class OpenAIProvider(ProviderBase):
    type: Literal["openai"] = Field(description="OpenAI or any OpenAI-compatible server (vLLM, Ollama, Groq, ...).")
    base_url: str = Field("https://api.openai.com/v1", description="API root, including `/v1` where the server uses it.")
    keys: list[ProviderKey] = Field(min_length=1, description="Upstream API keys; requests are spread over them by weight.")


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


ProviderConfig = Annotated[
    OpenAIProvider | AnthropicProvider | GeminiProvider | AzureProvider | MockProvider,
    Field(discriminator="type"),
]


class TargetConfig(Strict):
    provider: str = Field(description="Id of a provider in `providers`.")
    model: str = Field(min_length=1, description="Upstream model name; `*` in a wildcard alias stands for the requested suffix.")


class ModelConfig(Strict):
    alias: str = Field(min_length=1, description="The model name clients send; ending in `/*` makes a wildcard alias.")
    targets: list[TargetConfig] = Field(min_length=1, description="Where requests for this alias go, in order.")


class ClientKeyConfig(Strict):
    id: str = Field(min_length=1, description="Stable name of this client key (logs, metrics, admin API).")
    key: SecretStr = Field(description="The key clients send, or `sha256:<hex>` of it to keep only a hash.")
    models: list[str] | None = Field(None, description="Glob allow-list of aliases this key may use; absent means every alias.")
    expires: datetime | None = Field(None, description="When the key stops working (ISO 8601, UTC if no zone).")

    @field_validator("models")
    @classmethod
    def _globs_are_valid(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            check_glob(pattern)
        return patterns


class Config(Strict):
    version: Literal[1] = Field(description="Config format version; always 1.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Listener and process settings.")
    providers: list[ProviderConfig] = Field(min_length=1, description="Upstream providers and their keys.")
    models: list[ModelConfig] = Field(min_length=1, description="Aliases clients can ask for and their targets.")
    keys: list[ClientKeyConfig] | None = Field(None, description="Client keys; absent means the API is open (a warning is logged).")
