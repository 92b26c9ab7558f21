"""The ASGI vocabulary below every layer: request headers and bodies, JSON answers, and the
response-head extension the listener offers the app. Imports nothing above the leaves."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any, Final

import orjson

from mcp_barbican import jsonrpc
from mcp_barbican.types import Receive, Scope, Send

__all__ = [
    "BAD_NAME",
    "BAD_VALUE",
    "BodyTooLarge",
    "CLIENT_IP_KEY",
    "FRAMING_HEADERS",
    "HEAD_HEADERS_EXTENSION",
    "HeadHeaders",
    "Headers",
    "PRINCIPAL_KEY",
    "RESPONSE_HEADERS_KEY",
    "STOPPING_EXTENSION",
    "get_header",
    "json_error",
    "query_param",
    "read_body",
    "repeated_header",
    "respond",
    "respond_json",
    "rpc_error",
    "stopping_event",
    "wait_disconnect",
]

#: The resolved client address (str), set by the client-address layer for every request.
CLIENT_IP_KEY: Final = "mcp_barbican.client_ip"
#: The authenticated Principal, set by the authentication layer.
PRINCIPAL_KEY: Final = "mcp_barbican.principal"

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


# ---------------------------------------------------------------------------------------------
# The response-head extension (server/protocol.py writes what layers put in the scope)

#: The ASGI extension this server advertises in `scope["extensions"]`: it adds the HeadHeaders
#: an app puts under RESPONSE_HEADERS_KEY in the scope to the response head (those the response
#: does not set itself), so a layer can add headers without wrapping every `send`.
HEAD_HEADERS_EXTENSION: Final = "mcp_barbican.head_headers"
#: The extension under which our server hands each request an `asyncio.Event` set when the server
#: begins a graceful stop, so a long stream (`/admin/events`) can end its response cleanly first.
STOPPING_EXTENSION: Final = "mcp_barbican.stopping"
RESPONSE_HEADERS_KEY: Final = "mcp_barbican.response_headers"


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (what else it sends meanwhile is dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def stopping_event(scope: Scope) -> asyncio.Event | None:
    """The event set when our server begins a graceful stop (None under another server)."""
    event = scope.get("extensions", {}).get(STOPPING_EXTENSION)
    return event if isinstance(event, asyncio.Event) else None


# RFC 9110 section 5.6.2: a field name is a token; a value holds no control character but HTAB.
BAD_NAME: Final = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
BAD_VALUE: Final = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
FRAMING_HEADERS: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))
#: Kept variants of one HeadHeaders without the names responses set themselves.
_VARIANTS_MAX: Final = 64


class HeadHeaders:
    """Response headers checked and serialised once; `data` is what joins a head that lacks them all."""

    __slots__ = ("_without", "data", "headers", "names")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.headers = [(name.lower(), value) for name, value in headers]
        self.names = frozenset(name for name, _ in self.headers)
        if BAD_NAME.search(b"".join(self.names)) or BAD_VALUE.search(b"".join(v for _, v in self.headers)):
            raise ValueError("a response header name is no token, or a value holds a control character")
        if not FRAMING_HEADERS.isdisjoint(self.names):
            raise ValueError("framing and connection headers are the response's own")
        self.data = b"".join(b"%s: %s\r\n" % header for header in self.headers)
        #: The set without the names a response set itself, per such group of names (few recur).
        self._without: dict[frozenset[bytes], HeadHeaders] = {}

    def __bool__(self) -> bool:
        return bool(self.headers)

    def without(self, present: frozenset[bytes]) -> HeadHeaders:
        """These headers less those named in `present` (the response's own win)."""
        if not present:
            return self
        rest = self._without.get(present)
        if rest is None:
            rest = HeadHeaders(header for header in self.headers if header[0] not in present)
            if len(self._without) < _VARIANTS_MAX:
                self._without[present] = rest
        return rest
