"""Security headers on every response, errors and SSE streams included.

Defaults suit an API (OWASP secure-headers for APIs): nothing may frame or script it,
nothing may cache it. `X-XSS-Protection: 0` because the old browser filter it enabled
caused more harm than it prevented. HSTS only over TLS, where it means something.
Under our own server (`server/protocol.py`, which advertises the `mcp_barbican.head_headers`
extension) the response head adds them; under any other ASGI server the layer wraps `send`,
touching only `http.response.start`. Either way bodies (SSE above all) stream untouched.
A header the app already set wins, and an MCP with its own `security.headers` replaces the
server default as a whole on its routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mcp_barbican.asgi import HEAD_HEADERS_EXTENSION, RESPONSE_HEADERS_KEY, HeadHeaders
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.config import HeadersConfig

__all__ = ["SecurityHeaders", "security_headers"]

_MCP_PREFIX = "/mcp/"
_PATHS_MAX = 256

Header = tuple[bytes, bytes]


def security_headers(config: HeadersConfig, *, tls: bool) -> list[Header]:
    """The headers to add for this config; empty values are left out."""
    if not config.enabled:
        return []
    values = {
        b"x-content-type-options": "nosniff",
        b"x-xss-protection": "0",
        b"content-security-policy": config.csp,
        b"x-frame-options": config.x_frame_options,
        b"referrer-policy": config.referrer_policy,
        b"permissions-policy": config.permissions_policy,
        b"cache-control": config.cache_control,
        b"cross-origin-resource-policy": "same-origin",
    }
    if tls and config.hsts_max_age > 0:
        values[b"strict-transport-security"] = f"max-age={int(config.hsts_max_age)}; includeSubDomains"
    return [(name, value.encode("latin-1")) for name, value in values.items() if value]


class SecurityHeaders:
    """Adds the configured security headers to every HTTP response that lacks them.

    `per_mcp` gives MCPs with their own `security.headers` their own set on `/mcp/{id}...`
    routes, so one layer (one `send` wrapper per request) serves every route.
    """

    def __init__(
        self, app: ASGIApp, *, config: HeadersConfig, per_mcp: Mapping[str, HeadersConfig] | None = None
    ) -> None:
        self.app = app
        #: Per MCP id (None: the server default): the set over plain HTTP and the set over TLS.
        self.sets: dict[str | None, tuple[HeadHeaders, HeadHeaders]] = {None: _both(config)}
        #: The set chosen per request path, for the few paths that recur (bounded: paths are the client's).
        self._by_path: dict[str, tuple[HeadHeaders, HeadHeaders]] = {}
        for mcp_id, own in (per_mcp or {}).items():
            self.set_mcp(mcp_id, own)

    def set_mcp(self, mcp_id: str, config: HeadersConfig | None) -> None:
        """Give one MCP's routes their own set (None: the server default)."""
        self._by_path.clear()
        if config is None:
            self.sets.pop(mcp_id, None)
        else:
            self.sets[mcp_id] = _both(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chosen = self.sets[None] if len(self.sets) == 1 else self._for_path(scope["path"])
        extra = chosen[1] if scope.get("scheme") == "https" else chosen[0]
        if not extra:
            await self.app(scope, receive, send)
            return
        if HEAD_HEADERS_EXTENSION in scope.get("extensions", ()):
            # The server adds them to the head itself: no wrapper on every send.
            scope[RESPONSE_HEADERS_KEY] = extra
            await self.app(scope, receive, send)
            return
        added = extra.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in added if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _for_path(self, path: str) -> tuple[HeadHeaders, HeadHeaders]:
        chosen = self._by_path.get(path)
        if chosen is None:
            chosen = self.sets[None]
            if path.startswith(_MCP_PREFIX):
                chosen = self.sets.get(path[len(_MCP_PREFIX) :].partition("/")[0], chosen)
            if len(self._by_path) >= _PATHS_MAX:
                self._by_path.clear()
            self._by_path[path] = chosen
        return chosen


def _both(config: HeadersConfig) -> tuple[HeadHeaders, HeadHeaders]:
    return HeadHeaders(security_headers(config, tls=False)), HeadHeaders(security_headers(config, tls=True))
