"""Audio and image operations passed through to OpenAI-shaped upstreams (openai, azure):
the request goes out as the client sent it with only `model` replaced; the answer comes
back byte for byte (JSON, text or audio) with its status and content type.

Pure, no I/O. Imports only base. Multipart bodies travel as a list of MultipartField in
`body["fields"]` and are encoded here, with a boundary derived from the request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from truckllm.providers.base import CallContext, Operation, UpstreamRequest

PATHS: Mapping[Operation, str] = {
    Operation.AUDIO_TRANSCRIPTIONS: "audio/transcriptions",
    Operation.AUDIO_TRANSLATIONS: "audio/translations",
    Operation.AUDIO_SPEECH: "audio/speech",
    Operation.IMAGES: "images/generations",
}
MULTIPART_OPERATIONS = frozenset({Operation.AUDIO_TRANSCRIPTIONS, Operation.AUDIO_TRANSLATIONS})
# Answered by streaming the upstream bytes back as they are (dispatch's raw mode).
PASS_THROUGH_OPERATIONS = frozenset(PATHS)


@dataclass(frozen=True, slots=True)
class MultipartField:
    name: str
    value: bytes
    filename: str | None = None
    content_type: str | None = None


def media_request(op: Operation, body: Mapping[str, Any], url: str, headers: Mapping[str, str],
                  model: str, ctx: CallContext) -> UpstreamRequest:
    """The upstream request for a pass-through operation, `model` replaced by `model`."""
    if op in MULTIPART_OPERATIONS:
        fields = [f for f in body.get("fields") or [] if f.name != "model"]
        boundary = f"truckllm-{ctx.request_id}"
        payload = encode_multipart([MultipartField("model", model.encode()), *fields], boundary)
        content_type = f"multipart/form-data; boundary={boundary}"
        return UpstreamRequest("POST", url, {**headers, "Content-Type": content_type}, payload, False)
    payload = orjson.dumps({**body, "model": model})
    return UpstreamRequest("POST", url, {**headers, "Content-Type": "application/json"}, payload, False)


def encode_multipart(fields: list[MultipartField], boundary: str) -> bytes:
    parts: list[bytes] = []
    for field in fields:
        disposition = f'form-data; name="{_quote(field.name)}"'
        if field.filename is not None:
            disposition += f'; filename="{_quote(field.filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if field.content_type:
            head += f"Content-Type: {field.content_type}\r\n"
        parts.append(head.encode() + b"\r\n" + field.value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
