"""The access log: one INFO line per request on the `mcp_barbican.access` logger.

Fields: method, route (a template such as `/mcp/{id}`, never a query string), status, MCP id,
principal id (never a credential), duration in ms, response body bytes, client address. A
long-lived stream (an SSE GET) is logged when it ends, so its duration is the stream's. The
line is written after the response, and a failure to write it is dropped: logging never
fails a request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Final

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.logs import Fields
from mcp_barbican.security.oauth import WELL_KNOWN_PATH
from mcp_barbican.security.principal import principal_id
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog", "access_fields", "access_logger", "route_of"]

_NAME: Final = "mcp_barbican.access"
access_logger = logging.getLogger(_NAME)

_MCP: Final = "/mcp/"
_MCP_ROUTES: Final = {"": "/mcp/{id}", "sse": "/mcp/{id}/sse", "messages": "/mcp/{id}/messages"}
_PRM: Final = f"{WELL_KNOWN_PATH}/mcp/"
_FIXED: Final = frozenset(
    {"/mcp", "/sse", "/messages", "/healthz", "/readyz", "/metrics", "/api/v1/mcp/list", f"{WELL_KNOWN_PATH}/mcp"}
)
#: The longest MCP id a line carries (a config id is at most 64; a request may name anything).
_MAX_ID: Final = 64


def route_of(path: str) -> tuple[str, str | None]:
    """The route template of `path` and the MCP id it names (None: none). Templates form a small fixed set."""
    if path.startswith(_MCP):
        mcp_id, _, rest = path[len(_MCP) :].partition("/")
        return _MCP_ROUTES.get(rest, "/mcp/{id}/{other}"), mcp_id[:_MAX_ID] or None
    if path in _FIXED:
        return path, None
    if path.startswith(_PRM):
        return f"{_PRM}{{id}}", path[len(_PRM) :][:_MAX_ID] or None
    if path == "/admin" or path.startswith("/admin/"):
        return "/admin/*", None
    return "/{other}", None


def access_fields(scope: Scope, status: int, elapsed: float, size: int) -> dict[str, object]:
    """The fields of one access line (`elapsed` in seconds, `size` the response body's bytes)."""
    route, mcp_id = route_of(scope["path"])
    return {
        "method": scope["method"],
        "route": route,
        "status": status,
        "mcp": mcp_id,
        "principal": principal_id(scope),
        "duration_ms": round(elapsed * 1000, 3),
        "bytes": size,
        "client": scope.get(CLIENT_IP_KEY),
    }


class AccessLog:
    """Outermost layer: times each HTTP request and logs it once it is answered (status 0: never answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = size = 0

        async def observed(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            # The request is answered: its log line must not break it.
            with contextlib.suppress(Exception):
                if access_logger.isEnabledFor(logging.INFO):
                    fields = access_fields(scope, status, time.perf_counter() - started, size)
                    # handle() a record made here: Logger.info would walk the stack for a caller nobody shows.
                    message = Fields("request", fields)
                    access_logger.handle(access_logger.makeRecord(_NAME, logging.INFO, __file__, 0, message, (), None))
