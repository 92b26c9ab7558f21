"""Small raw-ASGI helpers for the data plane: headers, bodies and JSON answers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from mcp_barbican import jsonrpc
from mcp_barbican.types import Receive, Scope, Send

__all__ = [
    "BodyTooLarge",
    "Headers",
    "get_header",
    "json_error",
    "query_param",
    "read_body",
    "repeated_header",
    "respond",
    "respond_json",
    "rpc_error",
]

Headers = list[tuple[bytes, bytes]]
JSON_CONTENT = (b"content-type", b"application/json")


class BodyTooLarge(Exception):
    """The request body is over the configured limit."""


def get_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a header (`name` lowercase), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def repeated_header(scope: Scope, name: bytes) -> bool:
    """Whether a header (`name` lowercase) is sent more than once (ambiguous where it matters)."""
    seen = False
    for key, _value in scope["headers"]:
        if key == name:
            if seen:
                return True
            seen = True
    return False


def query_param(scope: Scope, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; raises BodyTooLarge past `limit` bytes without reading on."""
    declared = get_header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes = b"", headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    out = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await respond(send, status, orjson.dumps(payload), [JSON_CONTENT, *headers])


async def json_error(send: Send, status: int, error: str, message: str, headers: Headers | None = None) -> None:
    """A rejection outside the MCP protocol: `{"error": code, "message": why}`."""
    await respond_json(send, status, {"error": error, "message": message}, headers or ())


async def rpc_error(
    send: Send, status: int, code: int, message: str, request_id: Any = None, headers: Headers | None = None
) -> None:
    """A rejection of an MCP request: an HTTP status with a JSON-RPC error body."""
    await respond(send, status, jsonrpc.error_body(request_id, code, message), [JSON_CONTENT, *(headers or ())])
