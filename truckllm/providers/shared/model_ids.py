"""Model ids a client chose (the part of a wildcard alias after its prefix), checked
before they reach an upstream: no control characters anywhere (they would end up in
headers and logs), and, where a provider puts the model in the URL path (Gemini, Azure
deployments), exactly one path segment, so that no model id can reach another endpoint.

Pure. Imports only truckllm.errors.
"""

from __future__ import annotations

import re
import urllib.parse

from truckllm.errors import InvalidRequest

# C0 controls, DEL and the C1 controls: never part of a model id, and CR/LF would break
# the response headers that name the model.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What would make a path segment something else: another segment, a query, a fragment,
# a step up, an escape that a server might decode into one of those.
_NOT_IN_A_SEGMENT = re.compile(r"[/\\?#%]|^\.\.?$|\.\.")


def check_chosen_model(model: str, suffix: str) -> None:
    """400 naming `model` when `suffix`, the part of `model` a wildcard alias passes
    upstream, cannot be a model id: control characters, or `*` (the alias itself)."""
    if _CONTROL.search(suffix):
        raise InvalidRequest("'model' must not contain control characters.", param="model",
                             code="invalid_model")
    if "*" in suffix:
        raise InvalidRequest(f"'{model}' is a wildcard alias, not a model: replace `*` with "
                             "a model name.", param="model", code="invalid_model")


def path_segment(model: str) -> str:
    """`model` as one URL path segment, percent-encoded; 400 naming `model` when it holds
    what no model id does and a path would read as structure (`/`, `?`, `#`, `..`)."""
    if _NOT_IN_A_SEGMENT.search(model) or _CONTROL.search(model):
        raise InvalidRequest(f"The model '{model}' is not a valid model id for this provider "
                             "(it may not contain '/', '?', '#', '%', '\\\\' or '..').",
                             param="model", code="invalid_model")
    return urllib.parse.quote(model, safe="")
