"""Drive an ASGI app in-process: build a scope, feed a body, record what is sent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mcp_barbican.types import ASGIApp, Message, Scope


@dataclass
class Sent:
    """What an app sent back."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode().lower(): v.decode() for k, v in self.messages[0].get("headers", [])}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> Any:
        return orjson.loads(self.body)


def make_scope(
    method: str = "GET",
    path: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    *,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    scheme: str = "http",
    query: bytes = b"",
    **extra: Any,
) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("127.0.0.1", 6001),
    }
    scope.update(extra)
    return scope


async def call(app: ASGIApp, scope: Scope, body: bytes = b"") -> Sent:
    """Run `app` on one request with `body`; return what it sent."""
    sent = Sent()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.messages.append(message)

    await app(scope, receive, send)
    return sent


async def ok_app(scope: Scope, receive: Any, send: Any) -> None:
    """A downstream app that answers 200 with the request body it received."""
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": message.get("body", b"")})
