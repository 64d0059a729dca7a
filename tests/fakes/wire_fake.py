"""Shared plumbing of the Anthropic, Gemini and Azure fake upstreams: an aiohttp app on
127.0.0.1 that records every request and answers with scripted replies or the fake's own
default answer. Imports nothing from truckllm: the fakes stand for the outside world.

A test scripts the next answers with `fake.script(Reply(...))`: a status and JSON body,
a raw body, a list of SSE events (already framed, sent one by one), a dropped connection
after N events, a hang. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

HANG_LIMIT_S = 10.0


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it. `headers` keys are lower case."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    raw: bytes
    body: Any                       # parsed JSON, or None


@dataclass(frozen=True)
class Reply:
    """One scripted answer, used by the next request whose path contains `path`."""

    status: int = 200
    body: Any = None                            # JSON
    raw: bytes | None = None                    # exact bytes instead of JSON
    content_type: str = "application/json"
    events: Sequence[str | bytes] | None = None  # SSE events, each already framed
    drop_after_events: int | None = None        # close the connection mid-stream
    hang: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str | None = None


def sse(data: Any, event: str | None = None) -> str:
    """One framed SSE event; `data` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


class WireFake:
    """Base of the fakes: `.url`, `.requests`, `.script(...)`."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self._scripted: deque[Reply] = deque()

    def script(self, *replies: Reply) -> None:
        self._scripted.extend(replies)

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        return app

    async def record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw and request.content_type == "application/json" else None
        except orjson.JSONDecodeError:
            body = None
        recorded = Recorded(request.method, request.path, dict(request.query),
                            {k.lower(): v for k, v in request.headers.items()}, raw, body)
        self.requests.append(recorded)
        return recorded

    def next_script(self, path: str) -> Reply | None:
        for index, reply in enumerate(self._scripted):
            if reply.path is None or reply.path in path:
                del self._scripted[index]
                return reply
        return None

    async def send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.hang:
            await asyncio.sleep(HANG_LIMIT_S)
        if reply.events is not None:
            return await self.stream(request, reply.events, reply.status, reply.headers, reply.drop_after_events)
        if reply.raw is not None:
            return web.Response(status=reply.status, body=reply.raw,
                                headers={"Content-Type": reply.content_type, **reply.headers})
        return web.Response(status=reply.status, body=orjson.dumps(reply.body),
                            content_type="application/json", headers=dict(reply.headers))

    async def stream(self, request: web.Request, events: Sequence[str | bytes], status: int = 200,
                     headers: Mapping[str, str] | None = None,
                     drop_after: int | None = None) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})})
        await response.prepare(request)
        for count, event in enumerate(events):
            if drop_after is not None and count >= drop_after:
                transport = request.transport
                if transport is not None:
                    transport.close()
                return response
            await response.write(event.encode() if isinstance(event, str) else event)
            await asyncio.sleep(0)          # let each event leave as its own write
        await response.write_eof()
        return response


FakeT = TypeVar("FakeT", bound=WireFake)


@asynccontextmanager
async def serve(make: Callable[[], FakeT], base_path: str = "") -> AsyncIterator[FakeT]:
    fake = make()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = f"http://127.0.0.1:{server.port}{base_path}"
    try:
        yield fake
    finally:
        await server.close()


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=dict(headers or {}))


def last_user_text(messages: Sequence[Any], role: str = "user", text_of: Callable[[Any], str] | None = None) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == role:
            return text_of(message) if text_of else str(message.get("content", ""))
    return ""


def split_text(text: str) -> list[str]:
    """A reply cut in a few pieces, as upstreams stream it."""
    words = text.split(" ")
    pieces = [" ".join(words[i:i + 2]) for i in range(0, len(words), 2)]
    return [p if i == 0 else " " + p for i, p in enumerate(pieces)]


# Function tools through which agents run commands (Codex CLI's `exec_command`, older
# `shell`, Claude Code's `Bash`): a user turn asking to `run echo` gets a call running
# `echo hello`. The phrase, not the word "run": agents' own context text (Claude Code's
# reminders) says "run" and "running" on its own.
SHELL_TOOLS = ("exec_command", "shell", "local_shell", "Bash")


def shell_call(tool_names: Sequence[str], text: str) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) of the shell call a fake answers with, or None."""
    name = next((n for n in tool_names if n in SHELL_TOOLS), None)
    lowered = text.lower()
    if name is None or "run echo" not in lowered:
        return None
    if name == "Bash":
        return name, {"command": "echo hello", "description": "Print hello"}
    return name, ({"cmd": "echo hello"} if name == "exec_command" else {"command": ["echo", "hello"]})


def without_system(messages: Sequence[Any]) -> list[Any]:
    """The conversation without its system messages (the Anthropic API's mid-conversation
    ones, a chat request's): a fake answers the last user or tool turn."""
    return [m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))]
