"""`truckllm import litellm`: a LiteLLM proxy config becomes a TruckLLM config that
validates and routes the same way; what cannot be carried over is listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.fakes.anthropic_fake import make_anthropic_fake
from tests.fakes.azure_fake import AzureFake, make_azure_fake
from tests.fakes.openai_fake import make_openai_fake
from tests.harness import make_gateway
from truckllm.cli import main
from truckllm.config.litellm_import import convert
from truckllm.config.loader import load_bytes

LITELLM = Path(__file__).parent / "litellm" / "proxy_config.yaml"


def converted() -> tuple[dict[str, Any], list[str], list[str]]:
    imported = convert(yaml.safe_load(LITELLM.read_text()))
    env = {name: f"value-of-{name.lower()}" for name in imported.variables}
    load_bytes(imported.text.encode(), "imported.yaml", env)      # validates
    return yaml.safe_load(imported.text), imported.notes, imported.variables


def test_the_documented_kinds_of_deployment_carry_over() -> None:
    config, _, variables = converted()
    providers = {p["id"]: p for p in config["providers"]}
    assert providers["azure"] == {
        "id": "azure", "type": "azure", "base_url": "${AZURE_API_BASE_EASTUS}",
        "api_version": "2024-08-01-preview", "timeout_s": 60,
        "keys": [{"id": "key-1", "value": "${AZURE_API_KEY_EASTUS}", "rpm": 600}]}
    assert providers["anthropic"]["timeout_s"] == 90         # the deployment's own timeout
    assert providers["gemini"]["type"] == "gemini"
    assert providers["openai-3"]["base_url"] == "${VLLM_API_BASE}"    # OpenAI-compatible server
    assert set(variables) >= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "LITELLM_MASTER_KEY"}

    models = {m["alias"]: m for m in config["models"]}
    gpt4o = models["gpt-4o"]              # two deployments, simple-shuffle, a fallback
    assert gpt4o["strategy"] == "weighted"
    assert [(t["provider"], t["model"], t.get("weight", 1)) for t in gpt4o["targets"]] == [
        ("azure", "gpt-4o-eastus", 1), ("openai", "gpt-4o", 1), ("anthropic", "claude-sonnet-4-5", 0)]
    assert gpt4o["pricing"] == {"input_per_mtok": 2.5, "output_per_mtok": 10.0}
    assert gpt4o["context_window"] == 128000
    assert models["gpt-4"]["targets"] == gpt4o["targets"]            # model_group_alias
    assert models["gpt-4o-mini"]["targets"] == [{"provider": "openai-2", "model": "gpt-4o-mini"}]
    assert models["gpt-4o-mini"]["fallback_on_context_overflow"] == "gemini-flash"
    assert "titan" not in models

    assert config["routing"] == {"max_attempts": 4, "cooldown_s": 30, "breaker_failures": 4,
                                 "breaker_window_s": 60}
    assert config["server"]["admin_api_key"] == "${LITELLM_MASTER_KEY}"
    assert config["keys"] == [{"id": "default", "key": "${TRUCKLLM_CLIENT_KEY}"}]


def test_nothing_is_dropped_silently() -> None:
    _, notes, _ = converted()
    where = {note.split(":")[0] for note in notes}
    assert where >= {
        "model_list[6]",                                  # bedrock: not a provider TruckLLM speaks
        "model_list[2].litellm_params.temperature",
        "model_list[5]",                                  # no api_key
        "router_settings.redis_host", "litellm_settings.drop_params",
        "litellm_settings.success_callback", "general_settings.database_url",
        "general_settings.master_key", "environment_variables",
    }
    source = yaml.safe_load(LITELLM.read_text())
    carried = {"routing_strategy", "num_retries", "timeout", "allowed_fails", "cooldown_time",
               "fallbacks", "context_window_fallbacks", "model_group_alias"}
    for section in ("router_settings", "litellm_settings", "general_settings"):
        for name in source[section]:
            assert name in carried or f"{section}.{name}" in where, f"{section}.{name}"


def test_the_cli_writes_the_file_and_lists_the_notes(tmp_path: Path) -> None:
    out = tmp_path / "truckllm.yaml"
    result = CliRunner().invoke(main, ["import", "litellm", str(LITELLM), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Not carried over" in result.output and "bedrock" in result.output
    assert "TRUCKLLM_CLIENT_KEY" in result.output
    text = out.read_text()
    assert "# Not carried over" in text and "#   - model_list[6]" in text    # also in the file
    again = CliRunner().invoke(main, ["import", "litellm", str(LITELLM), "-o", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


@pytest.mark.parametrize(("content", "message"), [
    ("- just\n- a list\n", "YAML mapping"),
    ("general_settings: {}\n", "no `model_list`"),
    ("model_list: [\n", "is not YAML"),
    ("model_list:\n  - model_name: x\n    litellm_params: {model: bedrock/titan}\n", "could be carried over"),
])
def test_files_that_cannot_be_converted_get_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    result = CliRunner().invoke(main, ["import", "litellm", str(path)])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output


async def test_the_converted_config_routes_like_litellm_did() -> None:
    async with make_azure_fake() as azure, make_anthropic_fake() as anthropic, make_openai_fake() as local:
        litellm = {
            "model_list": [
                {"model_name": "gpt-4o", "litellm_params": {
                    "model": "azure/gpt-4o", "api_base": "os.environ/AZ_BASE",
                    "api_key": "os.environ/AZ_KEY", "api_version": "2024-10-21"}},
                {"model_name": "claude", "litellm_params": {
                    "model": "anthropic/claude-sonnet-4-5", "api_key": "os.environ/ANT_KEY",
                    "api_base": anthropic.url.removesuffix("/v1")}},     # LiteLLM's form: the host
                {"model_name": "local", "litellm_params": {
                    "model": "openai/gpt-4o-mini", "api_base": local.url, "api_key": "sk-local"}},
            ],
            "general_settings": {"master_key": "os.environ/MASTER"},
        }
        imported = convert(litellm)
        env = {"AZ_BASE": azure.url, "AZ_KEY": AzureFake.valid_key, "ANT_KEY": "sk-ant-test",
               "MASTER": "admin-secret-1", "TRUCKLLM_CLIENT_KEY": "tk-client-1"}
        config = yaml.safe_load(imported.text)
        async with make_gateway(config, env=env) as gateway:
            client = gateway.client("tk-client-1")
            for alias in ("gpt-4o", "claude", "local"):
                reply = await client.chat.completions.create(
                    model=alias, messages=[{"role": "user", "content": "hello"}])
                assert reply.choices[0].message.content, alias
    assert azure.requests[-1].headers["api-key"] == AzureFake.valid_key
    assert "/openai/deployments/gpt-4o/" in azure.requests[-1].path
    assert anthropic.requests[-1].headers["x-api-key"] == "sk-ant-test"
    assert local.requests[-1].headers["authorization"] == "Bearer sk-local"
    assert any("written in the file" in note for note in imported.notes)     # sk-local
