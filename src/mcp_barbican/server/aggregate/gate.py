"""Every message the aggregated endpoint sends to an MCP passes that MCP's own security pipeline.

The pipeline runs on a copy of the request's scope (a layer may take the credential out of
the headers), with the message as its body. Its endpoint sees `GATE_KEY` in the scope and hands
the admitted scope back instead of serving it, so `/mcp` and `/mcp/{id}` decide with the same
code: addresses, CORS, authentication, rate limits, input limits and authorization, counters and
audit events included. A refusal is kept whole (status, headers, body) to be sent as it is, or
named in the log when the MCP is only left out of a merged listing.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import PRINCIPAL_KEY
from mcp_barbican.jsonrpc import Message
from mcp_barbican.security.pipeline import Pipeline
from mcp_barbican.server.endpoint import GATE_KEY
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["Refusal", "through"]


class Refusal:
    """An answer a pipeline (or the upstream identity) gave instead of admitting the message."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int = 500, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body

    async def send_to(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})

    @property
    def reason(self) -> str:
        """The refusal in a few words, for the log."""
        try:
            answer: Any = jsonrpc.loads(self.body)
        except ValueError:
            return f"HTTP {self.status}"
        if isinstance(answer, dict):
            error = answer.get("error")
            if isinstance(error, dict):
                return f"HTTP {self.status}: {error.get('message', '')}"[:200]
            if isinstance(error, str):
                return f"HTTP {self.status}: {error}: {answer.get('message', '')}"[:200]
        return f"HTTP {self.status}"

    async def capture(self, message: MutableMapping[str, Any]) -> None:
        """The `send` that records a refusal instead of sending it."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def through(app: ASGIApp, scope: Scope, message: Message) -> Scope | Refusal:
    """Run one MCP's pipeline for `message`: the scope it admitted (principal, access), or its refusal."""
    copy = dict(scope)
    copy["headers"] = list(scope["headers"])
    copy.pop(PRINCIPAL_KEY, None)  # the MCP's own authentication says who calls it, as on `/mcp/{id}`
    if isinstance(app, Pipeline) and await app.admit(copy):  # its fast path: the same policies, no endpoint
        return copy
    admitted: list[Scope] = []
    copy[GATE_KEY] = admitted.append
    refusal = Refusal()
    await app(copy, _replay(message), refusal.capture)
    return admitted[0] if admitted else refusal


def _replay(message: Message) -> Receive:
    """The body again, for a layer that reads it to answer (the rate limit names the request id)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": jsonrpc.dumps(message), "more_body": False}

    return receive
