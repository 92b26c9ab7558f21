"""One MCP's request checks in a single call on the common path.

The per-MCP layers (static IP lists -> CORS -> authentication -> rate limits) each cost a
coroutine call, a header scan and a scope lookup or two, and end to end a microsecond here
costs two or three, because the extra code pushes the rest of the request out of the CPU
caches. Most requests are alike: an address the lists already admitted, no `Origin` (or no
CORS), a credential accepted before and still valid, and tokens in every bucket. This layer
decides those in one pass over the headers and hands them straight to the endpoint; every
other request (any refusal, a preflight or browser request, a repeated credential header, a
credential seen for the first time or changed since) goes through the layers, which decide in
full. The fast path only ever admits what the layers would admit, with the same effects: tests
send the same requests through both and compare answers, counters and audit events.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.security.auth import Authenticate
    from mcp_barbican.security.cors import CORS
    from mcp_barbican.security.ipfilter import IPFilter
    from mcp_barbican.security.ratelimit import RateLimit
    from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["McpGuard"]

_ORIGIN = b"origin"


class McpGuard:
    """Admits the common request itself; sends every other one through `layers`."""

    def __init__(
        self,
        layers: ASGIApp,
        endpoint: ASGIApp,
        *,
        ip_filter: IPFilter | None,
        cors: CORS | None,
        auth: Authenticate | None,
        rate_limit: RateLimit | None,
    ) -> None:
        self.layers = layers
        self.endpoint = endpoint
        self.cors = cors
        self.auth = auth
        # Bound once: every attribute lookup saved here is saved on every request.
        self._known_allowed = ip_filter.known_allowed if ip_filter is not None else None
        self._credential_header = auth.header if auth is not None else None
        self._admits = rate_limit.limiter.admits if rate_limit is not None else None
        self._mcp_id = rate_limit.mcp_id if rate_limit is not None else None
        self._clock = rate_limit.clock if rate_limit is not None else time.monotonic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or CLIENT_IP_KEY not in scope:
            await self.layers(scope, receive, send)
            return
        ip: str | None = scope[CLIENT_IP_KEY]
        if self._known_allowed is not None and not self._known_allowed(ip):
            await self.layers(scope, receive, send)
            return
        name = self._credential_header
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw: bytes | None = None
        origin: bytes | None = None
        repeated = False
        if name is not None:
            kept = []
            for header in headers:
                key = header[0]
                if key == name:
                    repeated = raw is not None
                    raw = header[1]
                    continue
                if key == _ORIGIN:
                    origin = header[1]
                kept.append(header)
        elif self.cors is not None:
            origin = next((value for key, value in headers if key == _ORIGIN), None)
        if repeated or origin is not None and self.cors is not None:
            await self.layers(scope, receive, send)
            return
        auth = self.auth
        principal: Principal | None = None
        if auth is not None:
            principal = auth.remembered(raw, time.time())
            if principal is None:
                await self.layers(scope, receive, send)
                return
        if self._admits is not None:
            who = principal.id if principal is not None else None
            if not self._admits(ip, who, self._mcp_id, self._clock()):
                await self.layers(scope, receive, send)  # refused there; a refusal took no token here
                return
        if principal is not None:
            assert auth is not None
            auth.admit(scope, principal, kept)
            if auth.audit is not None:
                await auth.record_success(scope, principal)
        await self.endpoint(scope, receive, send)
