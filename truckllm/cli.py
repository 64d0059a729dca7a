"""The `truckllm` command: click commands that map flags onto settings. No logic here."""

from __future__ import annotations

import gc
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from truckllm import __version__
from truckllm.config.loader import ConfigError, LoadedConfig, load_bytes, load_file
from truckllm.config.schema import ClientKeyConfig
from truckllm.config.starter import STARTER_CONFIG

CONTEXT = {"help_option_names": ["-h", "--help"]}


def config_option(function: Any) -> Any:
    return click.option(
        "-c", "--config", "config_path", envvar="TRUCKLLM_CONFIG", show_envvar=True,
        required=True, metavar="FILE", help="Config file (YAML).")(function)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="truckllm")
def main() -> None:
    """TruckLLM: one YAML file in, an OpenAI-compatible LLM gateway out.

    Start with `truckllm init config.yaml`, then `truckllm serve -c config.yaml`.
    """


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
@config_option
@click.option("--host", default=None, help="Overrides server.host.")
@click.option("--port", default=None, type=int, help="Overrides server.port.")
@click.option("--workers", default=1, type=click.IntRange(1, 256), show_default=True,
              help="Worker processes sharing the port, under one supervisor. With limits or "
                   "budgets, above 1 needs server.state_url.")
def serve(config_path: str, host: str | None, port: int | None, workers: int) -> None:
    """Run the gateway (SIGHUP reloads the config; SIGTERM drains and exits)."""
    # What start-up builds (the server's modules, the config, the app) lives as long as the
    # process, so the collector's passes over it while it is being built free nothing. The
    # runner turns the collector back on once it listens (`tune_gc`, which also freezes
    # what start-up built); the `finally` covers every way out before that.
    gc.disable()
    try:
        _serve(config_path, host, port, workers)
    finally:
        gc.enable()


def _serve(config_path: str, host: str | None, port: int | None, workers: int) -> None:
    from truckllm.observe.log import configure_logging
    from truckllm.server.runner import ListenError, run

    loaded = _load_or_exit(config_path)
    server = loaded.config.server
    configure_logging(server.log_level, server.log_format)
    if workers > 1:
        from truckllm.server.workers import refusal, supervise
        problem = refusal(loaded.config, workers)
        if problem:
            click.echo(f"error: {problem}", err=True)
            sys.exit(2)
        gc.enable()         # the supervisor runs as long as its workers
        sys.exit(supervise(config_path, host or server.host,
                           server.port if port is None else port, workers))
    try:
        run(loaded, host or server.host, server.port if port is None else port)
    except ListenError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command()
@config_option
def validate(config_path: str) -> None:
    """Check a config file; print every problem with its path and position.

    Exits 1 when the config is invalid, 0 when it is valid (warnings included).
    """
    from truckllm.limits import state_file_path

    loaded = _load_or_exit(config_path)
    config = loaded.config
    state_file = state_file_path(config_path, config.server.state_file)
    problem = _not_writable(state_file.parent)
    if problem:
        click.echo(f"warning: the state file {state_file} cannot be written ({problem}): usage "
                   "and spend would be lost on restart. Set server.state_file to a writable "
                   "place (under systemd, StateDirectory= gives one).", err=True)
    click.echo(f"{config_path}: valid ({len(config.providers)} providers, "
               f"{len(config.models)} aliases, {len(config.keys or [])} client keys)")


def _not_writable(directory: Path) -> str | None:
    if not directory.is_dir():
        return f"{directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable by this user"
    return None


@main.command()
@click.argument("file", default="config.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(file: str, force: bool) -> None:
    """Write a commented starter config that serves as is (default FILE: config.yaml)."""
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
@click.option("--id", "key_id", default=None, help="The key's id in the config (default: a random one).")
@click.option("--models", multiple=True, metavar="GLOB",
              help="Aliases the key may use (globs; repeat or separate with commas). Default: every alias.")
@click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=0), help="Tokens per minute.")
@click.option("--budget-usd", type=click.FloatRange(min=0), help="Spend allowed per budget period, in USD.")
@click.option("--budget-period", type=click.Choice(["daily", "weekly", "monthly", "total"]),
              help="When the budget resets (default: total, never).")
def keys_new(key_id: str | None, models: tuple[str, ...], rpm: int | None, tpm: int | None,
             budget_usd: float | None, budget_period: str | None) -> None:
    """Make a client key: print it once, and the `keys:` entry that holds only its hash."""
    key = "tk-" + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"id": key_id or f"key-{secrets.token_hex(3)}",
                             "key": f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"}
    globs = [glob.strip() for value in models for glob in value.split(",") if glob.strip()]
    optional = {"models": globs or None, "rpm": rpm, "tpm": tpm, "budget_usd": budget_usd,
                "budget_period": budget_period}
    entry.update({name: value for name, value in optional.items() if value is not None})
    try:
        ClientKeyConfig.model_validate(entry)
    except ValidationError as exc:
        raise click.UsageError("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None
    snippet = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=100)
    click.echo(f"key: {key}")
    click.echo("(shown only now: the config keeps only its hash; give it to the client)\n")
    click.echo("Paste under `keys:` in the config:\n")
    click.echo("".join(f"  {line}\n" for line in snippet.splitlines()), nl=False)


@main.group("import")
def import_() -> None:
    """Turn another gateway's config into a TruckLLM config."""


@import_.command("litellm")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the TruckLLM config here (default: print it).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def import_litellm(file: str, output: str | None, force: bool) -> None:
    """Convert a LiteLLM proxy config.yaml; list what could not be carried over."""
    from truckllm.config.litellm_import import convert

    try:
        source = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        imported = convert(source)
    except OSError as exc:
        click.echo(f"error: cannot read {file}: {exc.strerror}", err=True)
        sys.exit(1)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        click.echo(f"error: {file} is not YAML: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:
        click.echo(f"error: {file}: {exc}", err=True)
        sys.exit(1)
    placeholders = {name: f"placeholder-{name.lower()}" for name in imported.variables}
    try:
        load_bytes(imported.text.encode(), output or "<converted>", placeholders)
    except ConfigError as exc:          # a gap in the converter: say so rather than write it
        click.echo("error: the converted config does not validate:", err=True)
        for issue in exc.issues:
            click.echo(f"  {issue}", err=True)
        sys.exit(1)
    if output is None:
        click.echo(imported.text, nl=False)
    else:
        if Path(output).exists() and not force:
            click.echo(f"error: {output} already exists (use --force to overwrite)", err=True)
            sys.exit(1)
        Path(output).write_text(imported.text)
        click.echo(f"wrote {output}", err=True)
    if imported.notes:
        click.echo(f"\nNot carried over, or only approximately ({len(imported.notes)}):", err=True)
        for note in imported.notes:
            click.echo(f"  - {note}", err=True)
    if imported.variables:
        click.echo("\nThe config reads these environment variables: "
                   + ", ".join(imported.variables), err=True)
    if output is not None:
        click.echo(f"Check it with: truckllm validate -c {output}", err=True)
