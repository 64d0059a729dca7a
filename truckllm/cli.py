"""The `truckllm` command: click commands that map flags onto settings. No logic here."""

from __future__ import annotations

import hashlib
import secrets
import sys
from pathlib import Path

import click

from truckllm import __version__
from truckllm.config.loader import ConfigError, LoadedConfig, load_file
from truckllm.config.starter import STARTER_CONFIG


@click.group()
@click.version_option(__version__, prog_name="truckllm")
def main() -> None:
    """TruckLLM: one YAML file in, an OpenAI-compatible LLM gateway out."""


def _load_or_exit(path: str) -> LoadedConfig:
    try:
        return load_file(path)
    except ConfigError as exc:
        click.echo(f"{path}: invalid config ({len(exc.issues)} problem"
                   f"{'s' if len(exc.issues) != 1 else ''}):", err=True)
        for issue in exc.issues:
            click.echo(f"  {issue}", err=True)
        sys.exit(1)


@main.command()
@click.option("-c", "--config", "config_path", required=True, help="Config file (YAML).")
@click.option("--host", default=None, help="Overrides server.host.")
@click.option("--port", default=None, type=int, help="Overrides server.port.")
def serve(config_path: str, host: str | None, port: int | None) -> None:
    """Run the gateway."""
    from truckllm.observe.log import configure_logging
    from truckllm.server.runner import ListenError, run

    loaded = _load_or_exit(config_path)
    server = loaded.config.server
    configure_logging(server.log_level, server.log_format)
    try:
        run(loaded, host or server.host, server.port if port is None else port)
    except ListenError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("-c", "--config", "config_path", required=True, help="Config file (YAML).")
def validate(config_path: str) -> None:
    """Check a config file; print every problem with its path."""
    loaded = _load_or_exit(config_path)
    config = loaded.config
    click.echo(f"{config_path}: valid ({len(config.providers)} providers, "
               f"{len(config.models)} aliases, {len(config.keys or [])} client keys)")


@main.command()
@click.argument("file", default="config.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(file: str, force: bool) -> None:
    """Write a commented starter config that serves as is."""
    path = Path(file)
    if path.exists() and not force:
        click.echo(f"error: {file} already exists (use --force to overwrite)", err=True)
        sys.exit(1)
    path.write_text(STARTER_CONFIG)
    click.echo(f"wrote {file}; run: truckllm serve -c {file}")


@main.group()
def keys() -> None:
    """Client key helpers."""


@keys.command("new")
def keys_new() -> None:
    """Print a fresh client key and the sha256: form to put in the config."""
    key = "tk-" + secrets.token_urlsafe(32)
    click.echo(f"key:    {key}")
    click.echo(f"config: sha256:{hashlib.sha256(key.encode()).hexdigest()}")
