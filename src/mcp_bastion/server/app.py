"""The data-plane ASGI application: routing, health, and the security stack around each MCP.

The stack is built once, here, because its order is a security decision:

    security headers (every answer carries them, rejections too)
    -> Host / Origin guard (DNS rebinding; every route)
    -> router
       -> per MCP: its own headers if configured -> authentication (401/403)
          -> endpoint (body limits, JSON-RPC)

The stack grows by one layer per concern; each layer is a pure-ASGI class in `security/`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mcp_bastion.exceptions import ConfigError
from mcp_bastion.security.admin import AdminGuard, admin_tokens
from mcp_bastion.security.auth import Authenticate, Authenticator, AuthFailure, StaticTokens, bearer_credential
from mcp_bastion.security.counters import SecurityCounters
from mcp_bastion.security.headers import SecurityHeaders
from mcp_bastion.security.hosts import AllowedHosts, HostOriginGuard
from mcp_bastion.security.principal import CLIENT_IP_KEY, Principal
from mcp_bastion.server.endpoint import McpEndpoint
from mcp_bastion.server.http import get_header, json_error, respond_json
from mcp_bastion.server.runtime import McpRuntime
from mcp_bastion.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_bastion.config import AuthConfig, McpConfig, ProxyConfig

__all__ = ["BastionApp", "build_app"]

logger = logging.getLogger(__name__)

_PREFIX = "/mcp/"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def bearer_challenge(realm: str) -> Any:
    """The WWW-Authenticate value for a refusal (RFC 6750 section 3)."""

    def challenge(failure: AuthFailure) -> str:
        return f'Bearer realm="{_quote(realm)}", error="{failure.error}", error_description="{_quote(failure.reason)}"'

    return challenge


def _authenticator(auth: AuthConfig, mcp: McpConfig) -> Authenticator:
    if auth.type == "token":
        return StaticTokens.from_config(auth)
    raise ConfigError(f"auth type {auth.type!r} is not available in this build", path=f"mcps.{mcp.id}.auth.type")


class McpRoute:
    """One MCP's runtime, its guarded endpoint, and what `/api/v1/mcp/list` needs to know."""

    def __init__(self, mcp: McpConfig, config: ProxyConfig, counters: SecurityCounters) -> None:
        self.mcp = mcp
        self.runtime = McpRuntime(mcp, idle_timeout=config.server.session_idle_timeout)
        self.auth = config.effective_auth(mcp)
        security = config.effective_security(mcp)
        endpoint = McpEndpoint(self.runtime, limits=security.limits, messages_path=f"{_PREFIX}{mcp.id}/messages")
        app: ASGIApp = endpoint
        self.authenticator: Authenticator | None = None
        if self.auth.type != "none":
            self.authenticator = _authenticator(self.auth, mcp)
            app = Authenticate(
                app,
                authenticator=self.authenticator,
                header=self.auth.header,
                prefix=self.auth.prefix,
                mcp_id=mcp.id,
                counters=counters,
                challenge=bearer_challenge(mcp.id),
            )
        if mcp.security is not None:
            app = SecurityHeaders(app, config=mcp.security.headers)
        self.app = app

    async def admits(self, scope: Scope) -> bool:
        """Whether the request's credential would open this MCP (for the MCP list)."""
        if self.authenticator is None:
            return True
        raw = get_header(scope, self.auth.header.lower().encode("latin-1"))
        credential = bearer_credential(raw.decode("latin-1") if raw is not None else None, self.auth.prefix)
        if isinstance(credential, AuthFailure):
            return False
        verdict = await self.authenticator.authenticate(credential)
        return isinstance(verdict, Principal) and verdict.reaches(self.mcp.id)


async def _no_admin_route(scope: Scope, receive: Receive, send: Send) -> None:
    await json_error(send, 404, "not_found", f"no admin route {scope['path']} in this build")


class IpAllowList:
    """A small static allowlist of addresses and networks (the admin list)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]

    def admits(self, address: str | None) -> bool:
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


class BastionApp:
    """Routes `/mcp/{id}[/sse|/messages]`, the MCP list and health; runs the MCP runtimes."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.counters = SecurityCounters()
        self.routes = {mcp.id: McpRoute(mcp, config, self.counters) for mcp in config.mcps}
        self.runtimes: dict[str, McpRuntime] = {mcp_id: route.runtime for mcp_id, route in self.routes.items()}
        admin_ips = IpAllowList(config.server.admin.ip_whitelist)
        self.admin = AdminGuard(
            _no_admin_route,
            tokens=admin_tokens(config.server.admin),
            address_allowed=admin_ips.admits,
            counters=self.counters,
        )

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
        if CLIENT_IP_KEY not in scope:
            client = scope.get("client")
            scope[CLIENT_IP_KEY] = client[0] if client else None
        if path.startswith(_PREFIX):
            mcp_id, _, rest = path[len(_PREFIX) :].partition("/")
            route = self.routes.get(mcp_id)
            if route is None:
                await json_error(send, 404, "unknown_mcp", f"no MCP with id {mcp_id!r}")
                return
            scope["mcp_bastion.subpath"] = f"/{rest}" if rest else ""
            await route.app(scope, receive, send)
        elif path == "/admin" or path.startswith("/admin/"):
            await self.admin(scope, receive, send)
        elif path == "/api/v1/mcp/list":
            await self._mcp_list(scope, send)
        elif path == "/healthz":
            await respond_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._readyz(send)
        else:
            await json_error(send, 404, "not_found", f"no route for {path}")

    async def _mcp_list(self, scope: Scope, send: Send) -> None:
        """The MCPs the presented credential reaches (MCPs without auth reach everyone)."""
        reached = [route for route in self.routes.values() if await route.admits(scope)]
        if not reached:
            self.counters.authentication_failures += 1
            self.counters.violation()
            challenge = b'Bearer realm="mcp-bastion", error="invalid_token"'
            await json_error(
                send, 401, "invalid_token", "no MCP accepts this credential", [(b"www-authenticate", challenge)]
            )
            return
        listing = [
            {
                "id": r.mcp.id,
                "transport": r.mcp.transport,
                "status": r.runtime.status,
                "tool_count": r.runtime.tool_count,
            }
            for r in reached
        ]
        await respond_json(send, 200, {"mcps": listing, "count": len(listing)})

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
