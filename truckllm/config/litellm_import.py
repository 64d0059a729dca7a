"""A LiteLLM proxy `config.yaml` (already parsed) -> TruckLLM config text + notes.

Pure: a dict in; out the YAML text of an equivalent TruckLLM config and the list of
everything that could not be carried over (each note names where it was in the LiteLLM
file). Nothing is dropped silently: a setting is either converted or named in a note.

Mapping: each distinct upstream credential of `model_list` (provider kind, api_base,
api_version, api_key, rpm/tpm, timeout) becomes a provider with one key; each
`model_name` becomes an alias whose targets are its deployments; `os.environ/VAR`
becomes `${VAR}`; router settings become `routing:` and per-alias strategies;
`fallbacks` are appended to an alias's targets as last resorts (weight 0);
`general_settings.master_key` becomes the admin key. No I/O; must not import the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

# LiteLLM provider prefixes that speak a wire format TruckLLM has: prefix -> (type,
# default base_url or None for the type's own, environment variable LiteLLM reads the
# key from when the deployment gives none).
_KINDS: dict[str, tuple[str, str | None, str]] = {
    "openai": ("openai", None, "OPENAI_API_KEY"),
    "azure": ("azure", None, "AZURE_API_KEY"),
    "anthropic": ("anthropic", None, "ANTHROPIC_API_KEY"),
    "gemini": ("gemini", None, "GEMINI_API_KEY"),
    # OpenAI-compatible services: type openai at their documented API root
    "groq": ("openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": ("openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "deepseek": ("openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "openrouter": ("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "xai": ("openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    "together_ai": ("openai", "https://api.together.xyz/v1", "TOGETHERAI_API_KEY"),
    "hosted_vllm": ("openai", None, ""),
    "ollama_chat": ("openai", "http://localhost:11434", ""),
    "ollama": ("openai", "http://localhost:11434", ""),
}
# A model written without a prefix: LiteLLM infers the provider from the name.
_UNPREFIXED = [(re.compile(r"(gpt-|o\d|chatgpt-|text-embedding-|dall-e|whisper|tts-)"), "openai"),
               (re.compile(r"claude-"), "anthropic")]
_STRATEGIES = {
    "simple-shuffle": "weighted",
    "least-busy": "least_busy",
    "latency-based-routing": "lowest_latency",
}
_HANDLED_PARAMS = {"model", "api_key", "api_base", "base_url", "api_version", "rpm", "tpm",
                   "timeout", "stream_timeout", "weight", "extra_headers", "organization",
                   "input_cost_per_token", "output_cost_per_token"}
_ENV = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")
# Key placeholder for servers that need none (TruckLLM's openai type wants a key).
NO_KEY = "not-needed"


@dataclass
class Imported:
    text: str                       # the TruckLLM config (YAML with a comment header)
    notes: list[str]                # what could not be carried over, and why
    variables: list[str]            # environment variables the config reads


@dataclass
class _Provider:
    id: str
    body: dict[str, Any]


@dataclass
class _Converter:
    notes: list[str] = field(default_factory=list)
    providers: dict[tuple[Any, ...], _Provider] = field(default_factory=dict)
    used_ids: set[str] = field(default_factory=set)
    variables: list[str] = field(default_factory=list)

    def note(self, where: str, text: str) -> None:
        self.notes.append(f"{where}: {text}")

    def value(self, raw: Any) -> Any:
        """`os.environ/VAR` -> `${VAR}` (remembering VAR); anything else as written."""
        if isinstance(raw, str):
            match = _ENV.match(raw.strip())
            if match:
                if match.group(1) not in self.variables:
                    self.variables.append(match.group(1))
                return "${" + match.group(1) + "}"
        return raw

    def env(self, name: str) -> str:
        if name not in self.variables:
            self.variables.append(name)
        return "${" + name + "}"


def convert(litellm: Any) -> Imported:
    """A parsed LiteLLM proxy config -> an equivalent TruckLLM config and notes."""
    state = _Converter()
    if not isinstance(litellm, dict):
        raise ValueError("a LiteLLM config is a YAML mapping with a `model_list`")
    deployments = litellm.get("model_list")
    if not isinstance(deployments, list) or not deployments:
        raise ValueError("the file has no `model_list` (it holds the models to carry over)")
    router = _section(litellm, "router_settings", state)
    settings = _section(litellm, "litellm_settings", state)
    general = _section(litellm, "general_settings", state)
    for name in litellm:
        if name not in {"model_list", "router_settings", "litellm_settings", "general_settings"}:
            state.note(name, "this section has no TruckLLM equivalent and was not carried over"
                       + (" (set these variables in the environment instead)"
                          if name == "environment_variables" else ""))

    default_timeout = router.get("timeout", settings.get("request_timeout"))
    groups: dict[str, list[dict[str, Any]]] = {}
    infos: dict[str, dict[str, Any]] = {}
    for index, deployment in enumerate(deployments):
        where = f"model_list[{index}]"
        target = _target(deployment, where, default_timeout, state)
        if target is None:
            continue
        name = str(deployment["model_name"])
        groups.setdefault(name, []).append(target)
        info = deployment.get("model_info") or {}
        params = deployment.get("litellm_params") or {}
        for cost in ("input_cost_per_token", "output_cost_per_token"):
            if cost in params:
                info = {**info, cost: params[cost]}
        if info:
            infos.setdefault(name, {}).update(info)
            _info_notes(info, where, state)

    strategy_name = router.get("routing_strategy", "simple-shuffle")
    strategy = _STRATEGIES.get(str(strategy_name))
    if strategy is None:
        state.note("router_settings.routing_strategy", f"{strategy_name!r} has no TruckLLM "
                   "equivalent; aliases spread requests by target weight (`weighted`) instead")
        strategy = "weighted"

    models: list[dict[str, Any]] = []
    for name, targets in groups.items():
        model: dict[str, Any] = {"alias": name}
        if len(targets) > 1:
            model["strategy"] = strategy
        model["targets"] = targets
        _pricing(model, infos.get(name, {}))
        models.append(model)
    by_alias = {model["alias"]: model for model in models}

    max_fallbacks = 0
    for section_name, section in (("litellm_settings", settings), ("router_settings", router)):
        max_fallbacks = max(max_fallbacks, _fallbacks(section, section_name, by_alias, state))
        _context_fallbacks(section, section_name, by_alias, state)
        for unsupported in ("content_policy_fallbacks", "default_fallbacks"):
            if unsupported in section:
                state.note(f"{section_name}.{unsupported}", "not carried over: TruckLLM falls "
                           "back across an alias's targets and on context overflow only")
    _aliases(router.get("model_group_alias"), by_alias, models, state)   # with their fallbacks

    config: dict[str, Any] = {"version": 1}
    server = _server(general, settings, state)
    if server:
        config["server"] = server
    config["providers"] = [p.body for p in state.providers.values()]
    config["models"] = models
    if not models:
        raise ValueError("no deployment in `model_list` could be carried over:\n  "
                         + "\n  ".join(state.notes))
    if "master_key" in general:
        # LiteLLM asks every caller for a key once a master key is set: so does this config
        config["keys"] = [{"id": "default", "key": state.env("TRUCKLLM_CLIENT_KEY")}]
    routing = _routing(router, settings, max_fallbacks, state)
    if routing:
        config["routing"] = routing
    _leftovers(router, settings, general, state)
    return Imported(_render(config, state.notes), state.notes, state.variables)


def _section(litellm: dict[str, Any], name: str, state: _Converter) -> dict[str, Any]:
    section = litellm.get(name) or {}
    if not isinstance(section, dict):
        state.note(name, "not a mapping; ignored")
        return {}
    return section


def _target(deployment: Any, where: str, default_timeout: Any,
            state: _Converter) -> dict[str, Any] | None:
    if not isinstance(deployment, dict) or "model_name" not in deployment:
        state.note(where, "not a deployment (no `model_name`); skipped")
        return None
    params = deployment.get("litellm_params")
    if not isinstance(params, dict) or not isinstance(params.get("model"), str):
        state.note(where, "no `litellm_params.model`; skipped")
        return None
    model = params["model"]
    prefix, _, upstream = model.partition("/")
    if not upstream:
        prefix, upstream = _infer(model, params), model
    kind = _KINDS.get(prefix) if prefix else None
    if kind is None:
        state.note(where, f"model {model!r}: provider {prefix or 'unknown'!r} is not one TruckLLM "
                   "speaks (openai, azure, anthropic, gemini, or an OpenAI-compatible api_base); "
                   "this deployment was not carried over")
        return None
    name = str(deployment["model_name"])
    if name.count("*") > 1:
        state.note(where, f"model_name {name!r}: a TruckLLM wildcard alias has one `*`; skipped")
        return None
    if "*" in upstream and upstream != "*":
        state.note(where, f"model {model!r}: only a whole `*` passes the requested name through; skipped")
        return None
    provider = _provider(kind, prefix, params, deployment, where, default_timeout, state)
    target: dict[str, Any] = {"provider": provider, "model": upstream}
    weight = params.get("weight")
    if isinstance(weight, int | float) and weight != 1:
        target["weight"] = weight
    for name_ in params:
        if name_ not in _HANDLED_PARAMS:
            state.note(f"{where}.litellm_params.{name_}", "not carried over (TruckLLM passes "
                       "request parameters through as the client sends them)"
                       if name_ not in {"max_retries", "order"} else
                       "not carried over (retries and order are set per alias and in `routing:`)")
    for name_ in deployment:
        if name_ not in {"model_name", "litellm_params", "model_info", "rpm", "tpm"}:
            state.note(f"{where}.{name_}", "not carried over")
    return target


def _infer(model: str, params: dict[str, Any]) -> str:
    if params.get("api_base") or params.get("base_url"):
        return "openai"             # LiteLLM: an unprefixed model at an api_base is OpenAI-compatible
    for pattern, prefix in _UNPREFIXED:
        if pattern.match(model):
            return prefix
    return ""


def _provider(kind: tuple[str, str | None, str], prefix: str, params: dict[str, Any],
              deployment: dict[str, Any], where: str, default_timeout: Any,
              state: _Converter) -> str:
    """The id of the provider for this deployment's credential (made on first use)."""
    type_, default_base, key_env = kind
    base = state.value(params.get("api_base") or params.get("base_url") or default_base)
    if prefix.startswith("ollama") and isinstance(base, str) and not base.rstrip("/").endswith("/v1"):
        base = base.rstrip("/") + "/v1"
        state.note(where, "Ollama is reached through its OpenAI-compatible API at "
                   f"{base} (LiteLLM used its native API)")
    if type_ == "anthropic" and isinstance(base, str) and not base.startswith("${") \
            and not base.rstrip("/").endswith("/v1"):
        base = base.rstrip("/") + "/v1"       # LiteLLM's api_base is the host; ours the API root
    api_key = params.get("api_key")
    if api_key is None:
        if key_env and (prefix != "openai" or not params.get("api_base")):
            key = state.env(key_env)
        else:
            key = NO_KEY
            state.note(where, f"no api_key: TruckLLM sends the placeholder key {NO_KEY!r} "
                       "(fine for a server that checks none)")
    else:
        key = state.value(api_key)
        if key == api_key and isinstance(api_key, str):
            state.note(f"{where}.litellm_params.api_key", "a key written in the file was copied "
                       "as is; move it to an environment variable (`${VAR}`)")
    rpm = params.get("rpm", deployment.get("rpm"))
    tpm = params.get("tpm", deployment.get("tpm"))
    timeout = params.get("timeout", default_timeout)
    version = state.value(params.get("api_version"))
    headers = dict(params.get("extra_headers") or {})
    if params.get("organization"):
        headers["OpenAI-Organization"] = state.value(params["organization"])
    if params.get("stream_timeout") is not None:
        state.note(f"{where}.litellm_params.stream_timeout", "carried over as the provider's "
                   "first_byte_timeout_s (TruckLLM bounds a stream's silence with idle_timeout_s)")
    identity = (type_, base, version, key, rpm, tpm, timeout, params.get("stream_timeout"),
                tuple(sorted(headers.items())))
    if identity in state.providers:
        return state.providers[identity].id
    provider_id = _unique(_provider_name(type_, prefix, base), state.used_ids)
    body: dict[str, Any] = {"id": provider_id, "type": type_}
    if base is not None:
        body["base_url"] = base
    if type_ == "azure":
        if base is None:
            state.note(where, "azure deployment without api_base: set the provider's base_url")
            body["base_url"] = state.env("AZURE_API_BASE")
        if version is not None:
            body["api_version"] = version
    if isinstance(timeout, int | float) and timeout > 0:
        body["timeout_s"] = timeout
    if isinstance(params.get("stream_timeout"), int | float) and params["stream_timeout"] > 0:
        body["first_byte_timeout_s"] = params["stream_timeout"]
    if headers:
        body["headers"] = {str(k): state.value(v) for k, v in headers.items()}
    entry: dict[str, Any] = {"id": "key-1", "value": key}
    if rpm is not None:
        entry["rpm"] = rpm
    if tpm is not None:
        entry["tpm"] = tpm
    body["keys"] = [entry]
    state.providers[identity] = _Provider(provider_id, body)
    return provider_id


def _provider_name(type_: str, prefix: str, base: Any) -> str:
    if not isinstance(base, str) or base.startswith("${") or prefix not in ("openai", "azure", "hosted_vllm"):
        return prefix.replace("_", "-")
    host = urlsplit(base).hostname or ""
    label = host.split(".")[0] if type_ == "azure" else host.removeprefix("api.").split(".")[0]
    label = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return f"{prefix.replace('_', '-')}-{label}" if label and label != "openai" else prefix


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{name}-{n}", n + 1
    used.add(candidate)
    return candidate


def _info_notes(info: dict[str, Any], where: str, state: _Converter) -> None:
    # `id` and `mode` only label the deployment inside LiteLLM: nothing to carry
    known = {"input_cost_per_token", "output_cost_per_token", "max_input_tokens", "max_tokens",
             "id", "mode"}
    for name in info:
        if name not in known:
            state.note(f"{where}.model_info.{name}", "not carried over")


def _pricing(model: dict[str, Any], info: dict[str, Any]) -> None:
    inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if isinstance(inp, int | float) and isinstance(out, int | float):
        model["pricing"] = {"input_per_mtok": round(inp * 1_000_000, 6),
                            "output_per_mtok": round(out * 1_000_000, 6)}
    window = info.get("max_input_tokens", info.get("max_tokens"))
    if isinstance(window, int) and window > 0:
        model["context_window"] = window


def _aliases(raw: Any, by_alias: dict[str, dict[str, Any]], models: list[dict[str, Any]],
             state: _Converter) -> None:
    """`model_group_alias: {gpt-4: gpt-4o}` -> an alias gpt-4 with gpt-4o's targets."""
    for name, group in (raw or {}).items():
        where = f"router_settings.model_group_alias.{name}"
        if isinstance(group, dict):
            if group.get("hidden"):
                state.note(where, "`hidden` is not carried over: the alias is listed in /v1/models")
            group = group.get("model")
        if group not in by_alias or name in by_alias:
            state.note(where, f"alias of {group!r}, which is not a model_name here; skipped")
            continue
        copy = {**by_alias[group], "alias": str(name)}
        models.append(copy)
        by_alias[str(name)] = copy


def _fallbacks(section: dict[str, Any], section_name: str, by_alias: dict[str, dict[str, Any]],
               state: _Converter) -> int:
    """`fallbacks: [{gpt-4o: [claude]}]`: claude's targets are appended to gpt-4o's with
    weight 0 (tried only when the alias's own targets fail). Returns the most targets
    an alias gained, so that `max_attempts` leaves room for them."""
    most = 0
    for entry in section.get("fallbacks") or []:
        for name, fallbacks in (entry or {}).items() if isinstance(entry, dict) else ():
            where = f"{section_name}.fallbacks.{name}"
            model = by_alias.get(name)
            if model is None:
                state.note(where, "not a model_name here; skipped")
                continue
            added = 0
            for fallback in fallbacks if isinstance(fallbacks, list) else [fallbacks]:
                source = by_alias.get(fallback)
                if source is None or fallback == name:
                    state.note(where, f"fallback {fallback!r} is not another model_name here; skipped")
                    continue
                targets = [{**t, "weight": 0} for t in source["targets"]
                           if (t["provider"], t["model"]) not in
                           {(o["provider"], o["model"]) for o in model["targets"]}]
                model["targets"] = [*model["targets"], *targets]
                added += len(targets)
            if added:
                if model.get("strategy", "weighted") not in ("weighted", "fallback"):
                    state.note(where, f"strategy {model['strategy']} ignores weights: fallbacks "
                               "compete with the alias's own targets (use strategy weighted "
                               "to keep them last)")
                else:
                    primary = [t for t in model["targets"] if t.get("weight", 1) != 0]
                    model["strategy"] = "weighted" if len(primary) > 1 else "fallback"
                    model["targets"] = [{k: v for k, v in t.items() if k != "weight"}
                                        if model["strategy"] == "fallback" else t
                                        for t in model["targets"]]
                most = max(most, added)
    return most


def _context_fallbacks(section: dict[str, Any], section_name: str,
                       by_alias: dict[str, dict[str, Any]], state: _Converter) -> None:
    for entry in section.get("context_window_fallbacks") or []:
        for name, fallbacks in (entry or {}).items() if isinstance(entry, dict) else ():
            where = f"{section_name}.context_window_fallbacks.{name}"
            chain = fallbacks if isinstance(fallbacks, list) else [fallbacks]
            if name not in by_alias or not chain or chain[0] not in by_alias:
                state.note(where, "names a model_name that is not here; skipped")
                continue
            by_alias[name]["fallback_on_context_overflow"] = chain[0]
            if len(chain) > 1:
                state.note(where, f"only the first ({chain[0]!r}) is carried over; chain "
                           f"further by giving {chain[0]!r} its own fallback_on_context_overflow")


def _server(general: dict[str, Any], settings: dict[str, Any], state: _Converter) -> dict[str, Any]:
    server: dict[str, Any] = {}
    master = general.get("master_key")
    if master is not None:
        value = state.value(master)
        server["admin_api_key"] = value
        state.note("general_settings.master_key", "became server.admin_api_key (the admin "
                   "API); it does not call models in TruckLLM: clients use the keys under "
                   "`keys:`, here one read from TRUCKLLM_CLIENT_KEY (make more with "
                   "`truckllm keys new`); LiteLLM's virtual keys live in its database and "
                   "are not carried over")
        if value == master:
            state.note("general_settings.master_key", "written in the file; move it to an "
                       "environment variable (`${VAR}`)")
    if settings.get("json_logs"):
        server["log_format"] = "json"
    return server


def _routing(router: dict[str, Any], settings: dict[str, Any], fallbacks: int,
             state: _Converter) -> dict[str, Any]:
    routing: dict[str, Any] = {}
    retries = router.get("num_retries", settings.get("num_retries"))
    if isinstance(retries, int) and retries >= 0:
        routing["max_attempts"] = min(20, retries + 1 + fallbacks)
    elif fallbacks:
        routing["max_attempts"] = min(20, 3 + fallbacks)
    cooldown = router.get("cooldown_time", settings.get("cooldown_time"))
    if isinstance(cooldown, int | float) and cooldown > 0:
        routing["cooldown_s"] = min(cooldown, 3600)
    allowed = router.get("allowed_fails", settings.get("allowed_fails"))
    if isinstance(allowed, int) and allowed >= 0:
        # LiteLLM cools a deployment down once its failures in a minute exceed allowed_fails
        routing["breaker_failures"] = allowed + 1
        routing["breaker_window_s"] = 60
    return routing


_ROUTER_DONE = {"routing_strategy", "num_retries", "timeout", "fallbacks", "context_window_fallbacks",
                "content_policy_fallbacks", "default_fallbacks", "cooldown_time", "allowed_fails",
                "model_group_alias"}
_SETTINGS_DONE = {"num_retries", "request_timeout", "fallbacks", "context_window_fallbacks",
                  "content_policy_fallbacks", "default_fallbacks", "cooldown_time", "allowed_fails",
                  "json_logs"}
_GENERAL_DONE = {"master_key"}


def _leftovers(router: dict[str, Any], settings: dict[str, Any], general: dict[str, Any],
               state: _Converter) -> None:
    for section_name, section, done in (("router_settings", router, _ROUTER_DONE),
                                        ("litellm_settings", settings, _SETTINGS_DONE),
                                        ("general_settings", general, _GENERAL_DONE)):
        for name in section:
            if name not in done:
                state.note(f"{section_name}.{name}", "not carried over")


class _PlainDumper(yaml.SafeDumper):
    """Writes a shared object in full each time: `&id001` anchors puzzle readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _render(config: dict[str, Any], notes: list[str]) -> str:
    header = ["# TruckLLM config converted from a LiteLLM proxy config by `truckllm import litellm`.",
              "# Reference: docs/configuration.md; check it with `truckllm validate -c FILE`."]
    if notes:
        header.append("#")
        header.append("# Not carried over, or only approximately (see docs/migrating-from-litellm.md):")
        header += [f"#   - {note}" for note in notes]
    body = yaml.dump(config, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
    return "\n".join(header) + "\n\n" + body
