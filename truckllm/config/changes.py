"""What differs between two configs, in ids: for reload log lines and results. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from truckllm.config.schema import Config

# Settings a running process cannot take over: its listening sockets are already bound.
RESTART_SETTINGS = ("host", "port", "admin_listen", "keepalive_timeout_s", "max_connections",
                    "state_url", "state_failure")
_ID_SECTIONS = ("server", "providers", "models", "keys")


@dataclass(frozen=True, slots=True)
class IdChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed)}


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    providers: IdChanges
    upstream_keys: IdChanges        # "provider/key"
    aliases: IdChanges
    client_keys: IdChanges
    server: tuple[str, ...]                     # server.* settings that changed
    sections: tuple[str, ...]                   # other top-level sections that changed
    needs_restart: tuple[str, ...]              # e.g. ("server.port",)

    def as_dict(self) -> dict[str, Any]:
        parts: dict[str, Any] = {
            name: part.as_dict()
            for name, part in (("providers", self.providers), ("upstream_keys", self.upstream_keys),
                               ("aliases", self.aliases), ("client_keys", self.client_keys))
            if part
        }
        if self.server:
            parts["server"] = list(self.server)
        if self.sections:
            parts["sections"] = list(self.sections)
        if self.needs_restart:
            parts["needs_restart"] = list(self.needs_restart)
        return parts


def diff_configs(old: Config, new: Config, started: Config | None = None) -> ConfigChanges:
    """What `new` changes over `old`; what needs a restart is judged against `started`,
    the config the process started with (by default `old`): a setting put back to what
    the process runs with needs none."""
    server = tuple(name for name in type(new.server).model_fields
                   if getattr(old.server, name, None) != getattr(new.server, name, None))
    running = (started or old).server
    return ConfigChanges(
        providers=_compare({p.id: p for p in old.providers}, {p.id: p for p in new.providers}),
        upstream_keys=_compare(_upstream_keys(old), _upstream_keys(new)),
        aliases=_compare({m.alias: m for m in old.models}, {m.alias: m for m in new.models}),
        client_keys=_compare({k.id: k for k in old.keys or []}, {k.id: k for k in new.keys or []}),
        server=server,
        sections=tuple(name for name in type(new).model_fields
                       if name not in _ID_SECTIONS and getattr(old, name) != getattr(new, name)),
        needs_restart=(*(f"server.{name}" for name in RESTART_SETTINGS
                         if getattr(running, name) != getattr(new.server, name)),
                       # the response store is opened once, at start-up
                       *(("responses.store",) if (started or old).responses.store != new.responses.store
                         else ())),
    )


def _upstream_keys(config: Config) -> dict[str, Any]:
    return {f"{p.id}/{k.id}": k for p in config.providers for k in p.keys}


def _compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> IdChanges:
    return IdChanges(
        added=_sorted(k for k in new if k not in old),
        removed=_sorted(k for k in old if k not in new),
        changed=_sorted(k for k in new if k in old and old[k] != new[k]),
    )


def _sorted(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(ids))
