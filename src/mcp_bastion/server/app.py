"""The data-plane ASGI application: routing, health, and the per-MCP security stack.

The stack is built once, in one place, because its order is a security decision:
security headers (so rejections carry them too) -> Host/Origin guard (every route) ->
router -> per MCP: its own headers, if configured -> authentication -> endpoint.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mcp_bastion.security.auth import StaticToken, TokenAuth, digest
from mcp_bastion.security.headers import SecurityHeaders
from mcp_bastion.security.hosts import AllowedHosts, HostOriginGuard
from mcp_bastion.server.endpoint import McpEndpoint
from mcp_bastion.server.http import json_error, respond_json
from mcp_bastion.server.runtime import McpRuntime
from mcp_bastion.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_bastion.config import AuthConfig, McpConfig, ProxyConfig

__all__ = ["BastionApp", "build_app"]

logger = logging.getLogger(__name__)

_PREFIX = "/mcp/"


def _static_tokens(auth: AuthConfig) -> list[StaticToken]:
    tokens = []
    if auth.token is not None:
        tokens.append(StaticToken("token", digest(auth.token.get_secret_value())))
    for entry in auth.tokens:
        if entry.token is not None:
            hashed = digest(entry.token.get_secret_value())
        else:
            assert entry.sha256 is not None
            hashed = bytes.fromhex(entry.sha256)
        tokens.append(StaticToken(entry.id, hashed, entry.expires_at))
    return tokens


def _authenticated(app: ASGIApp, auth: AuthConfig, mcp: McpConfig) -> ASGIApp:
    if auth.type == "none":
        return app
    if auth.type == "token":
        return TokenAuth(app, tokens=_static_tokens(auth), header=auth.header, prefix=auth.prefix, realm=mcp.id)
    from mcp_bastion.exceptions import ConfigError

    raise ConfigError(f"auth type {auth.type!r} is not available in this build", path=f"mcps.{mcp.id}.auth.type")


class BastionApp:
    """Routes `/mcp/{id}[/sse|/messages]`, `/healthz` and `/readyz`; runs the MCP runtimes."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.runtimes: dict[str, McpRuntime] = {}
        self.endpoints: dict[str, ASGIApp] = {}
        for mcp in config.mcps:
            runtime = McpRuntime(mcp, idle_timeout=config.server.session_idle_timeout)
            security = config.effective_security(mcp)
            endpoint = McpEndpoint(
                runtime, max_body_size=security.limits.max_body_size, messages_path=f"{_PREFIX}{mcp.id}/messages"
            )
            self.runtimes[mcp.id] = runtime
            guarded = _authenticated(endpoint, config.effective_auth(mcp), mcp)
            if mcp.security is not None:
                guarded = SecurityHeaders(guarded, config=mcp.security.headers)
            self.endpoints[mcp.id] = guarded

    async def startup(self) -> None:
        for runtime in self.runtimes.values():
            runtime.start()

    async def shutdown(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(_PREFIX):
            mcp_id, _, rest = path[len(_PREFIX) :].partition("/")
            endpoint = self.endpoints.get(mcp_id)
            if endpoint is None:
                await json_error(send, 404, "unknown_mcp", f"no MCP with id {mcp_id!r}")
                return
            scope["mcp_bastion.subpath"] = f"/{rest}" if rest else ""
            await endpoint(scope, receive, send)
        elif path == "/healthz":
            await respond_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._readyz(send)
        else:
            await json_error(send, 404, "not_found", f"no route for {path}")

    async def _readyz(self, send: Send) -> None:
        waiting = [
            {"id": r.id, "status": r.status} for r in self.runtimes.values() if r.mcp.required and r.status != "ready"
        ]
        if waiting:
            await respond_json(send, 503, {"status": "not ready", "not_ready": waiting})
        else:
            await respond_json(send, 200, {"status": "ready"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def describe(self) -> list[dict[str, Any]]:
        return [runtime.describe() for runtime in self.runtimes.values()]


def build_app(config: ProxyConfig) -> tuple[ASGIApp, BastionApp]:
    """The whole data plane, outermost layer first, and the core for the runner to manage."""
    core = BastionApp(config)
    allowed = AllowedHosts.build(config.server.host, config.server.allowed_hosts)
    app = HostOriginGuard(core, allowed=allowed)
    return SecurityHeaders(app, config=config.server.security.headers), core
