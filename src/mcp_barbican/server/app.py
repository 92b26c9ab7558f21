"""The data-plane ASGI application: routing, health, the MCP list and OAuth metadata.

The security layers and their order live in `shields.py`; this module routes:
`/mcp/{id}[/sse|/messages]` to each MCP's guarded endpoint, `/api/v1/mcp/list`,
`/.well-known/oauth-protected-resource/mcp/{id}`, `/admin/*` to the admin guard, and the
health routes, which alone skip the dynamic IP rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mcp_barbican.admin import AdminApp
from mcp_barbican.audit import AuditTrail, build_sinks
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.admin import AdminGuard, admin_tokens
from mcp_barbican.security.auth import AuthFailure, bearer_credential
from mcp_barbican.security.client_ip import ClientAddress
from mcp_barbican.security.headers import SecurityHeaders
from mcp_barbican.security.hosts import AllowedHosts, HostOriginGuard
from mcp_barbican.security.ipfilter import IpSet, decide
from mcp_barbican.security.oauth import WELL_KNOWN_PATH, protected_resource_metadata
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.tokens import check_listed_ids
from mcp_barbican.server.endpoint import McpEndpoint
from mcp_barbican.server.http import get_header, json_error, repeated_header, respond_json
from mcp_barbican.server.registry import Registry
from mcp_barbican.server.runtime import McpRuntime
from mcp_barbican.server.shields import Shields, resource_url
from mcp_barbican.storage import open_storage
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.config import McpConfig, ProxyConfig

__all__ = ["BarbicanApp", "build_app"]

logger = logging.getLogger(__name__)

_PREFIX = "/mcp/"
_PRM_PREFIX = f"{WELL_KNOWN_PATH}/mcp/"


class McpRoute:
    """One MCP's runtime, its guarded endpoint, and what the MCP list needs to know."""

    def __init__(self, mcp: McpConfig, config: ProxyConfig, shields: Shields) -> None:
        self.mcp = mcp
        self.runtime = McpRuntime(mcp, idle_timeout=config.server.session_idle_timeout, quota=shields.sessions)
        self.auth = config.effective_auth(mcp)
        endpoint = McpEndpoint(
            self.runtime,
            limits=config.effective_security(mcp).limits,
            messages_path=f"{_PREFIX}{mcp.id}/messages",
            audit=shields.recording,
        )
        self.app, self.authenticator, self.cors = shields.protect(endpoint, mcp)

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


class BarbicanApp:
    """Routes `/mcp/{id}[/sse|/messages]`, the MCP list and health; runs the MCP runtimes."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.storage = open_storage(config.server.storage)
        audit = config.server.audit
        self.audit = AuditTrail(
            build_sinks(audit, config.server.storage), queue_size=audit.queue_size, arguments=audit.arguments
        )
        self.shields = Shields(config, rule_store=self.storage.ip_rules, audit=self.audit)
        self.counters = self.shields.counters
        self.routes = {mcp.id: McpRoute(mcp, config, self.shields) for mcp in config.mcps}
        self.runtimes: dict[str, McpRuntime] = {mcp_id: route.runtime for mcp_id, route in self.routes.items()}
        self.registry = Registry(self)
        #: The outermost layer, set by build_app, told about each registered MCP's own headers.
        self.security_headers: SecurityHeaders | None = None
        self.admin_app = AdminApp(self)
        self.rebuild_admin()
        self.guarded = self.shields.dynamic_filter(self._route)
        #: Coroutine functions run for the life of the app (e.g. the TLS certificate reloader).
        self.background: list[Callable[[], Awaitable[None]]] = []
        self._background_tasks: list[asyncio.Task[None]] = []
        self.listing = self.shields.static_filter(self._mcp_list_app, config.server.security)

    def rebuild_admin(self) -> None:
        """The admin guard for the current `server.admin` (at start and on reload)."""
        admin = self.config.server.admin
        self.admin_ips = IpSet.build(admin.ip_whitelist)
        self.admin = AdminGuard(
            self.admin_app,
            tokens=admin_tokens(admin),
            address_allowed=self._admin_address,
            counters=self.counters,
            audit=self.shields.recording,
        )

    def _admin_address(self, ip: str | None) -> bool:
        """The admin list, and dynamic denies and bans; dynamic allows never widen the admin list."""
        empty = IpSet.build(())
        dynamic = self.shields.dynamic
        verdict = decide(
            ip, whitelist=self.admin_ips, blacklist=empty, dynamic=dynamic, now=time.time(), dynamic_allow=False
        )
        return verdict.allowed

    async def startup(self) -> None:
        self.audit.start()
        for record in await self.storage.tokens():
            self.shields.issued.put(record)
        check_listed_ids(self.config, self.shields.issued)
        await self.shields.start()
        for runtime in self.runtimes.values():
            runtime.start()
        await self.registry.load()
        self._background_tasks = [asyncio.ensure_future(job()) for job in self.background]

    async def shutdown(self) -> None:
        for task in self._background_tasks:
            task.cancel()
        for runtime in self.runtimes.values():
            await runtime.aclose()
        await self.shields.stop()
        await self.audit.aclose()
        await self.storage.aclose()

    def headers_for(self, mcp_id: str, mcp: McpConfig | None) -> None:
        """Give an MCP served at run time its own security headers (None: the server's, or it is gone)."""
        if self.security_headers is not None:
            own = mcp.security.headers if mcp is not None and mcp.security is not None else None
            self.security_headers.set_mcp(mcp_id, own)

    def origin_allowed(self, scope: Scope, origin: str) -> bool:
        """Origins an MCP's CORS policy admits pass the DNS-rebinding Origin check on its routes."""
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return False
        route = self.routes.get(path[len(_PREFIX) :].partition("/")[0])
        return route is not None and route.cors is not None and route.cors.allows(origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            await respond_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._readyz(send)
        else:
            await self.guarded(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        admin_port = self.config.server.admin.port
        if admin_port is not None:
            # The admin API has its own listener: only it serves /admin, and it serves nothing else.
            server = scope.get("server")
            on_admin_port = server is not None and server[1] == admin_port
            if on_admin_port != self._is_admin_path(path):
                await json_error(send, 404, "not_found", f"no route for {path} on this listener")
                return
        if path.startswith(_PREFIX):
            mcp_id, _, rest = path[len(_PREFIX) :].partition("/")
            route = self.routes.get(mcp_id)
            if route is None:
                await json_error(send, 404, "unknown_mcp", f"no MCP with id {mcp_id!r}")
                return
            scope["mcp_barbican.subpath"] = f"/{rest}" if rest else ""
            await route.app(scope, receive, send)
        elif self._is_admin_path(path):
            await self.admin(scope, receive, send)
        elif path == "/metrics":  # server.metrics.public: the admin API's handler, without its guard
            await self.admin_app(scope, receive, send)
        elif path == "/api/v1/mcp/list":
            await self.listing(scope, receive, send)
        elif path.startswith(_PRM_PREFIX):
            await self._resource_metadata(scope, send, path[len(_PRM_PREFIX) :])
        else:
            await json_error(send, 404, "not_found", f"no route for {path}")

    def _is_admin_path(self, path: str) -> bool:
        """The admin API, and /metrics unless server.metrics.public opens it."""
        if path == "/metrics":
            return not self.config.server.metrics.public
        return path == "/admin" or path.startswith("/admin/")

    async def _resource_metadata(self, scope: Scope, send: Send, mcp_id: str) -> None:
        """RFC 9728 metadata of an MCP whose clients authenticate with OAuth."""
        route = self.routes.get(mcp_id)
        auth = route.auth if route is not None else None
        if auth is None or auth.oauth2 is None or auth.jwt is None:
            await json_error(send, 404, "not_found", f"no OAuth protected resource at /mcp/{mcp_id}")
            return
        resource = auth.oauth2.resource or resource_url(scope, mcp_id)
        await respond_json(send, 200, protected_resource_metadata(resource, auth.oauth2, auth.jwt))

    async def _mcp_list_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._mcp_list(scope, send)

    async def _mcp_list(self, scope: Scope, send: Send) -> None:
        """The MCPs the presented credential reaches (MCPs without auth reach everyone)."""
        for name in sorted({r.auth.header for r in self.routes.values() if r.authenticator is not None}):
            if repeated_header(scope, name.lower().encode("latin-1")):
                await json_error(send, 400, "invalid_request", f"more than one {name} header")
                return
        reached = [route for route in self.routes.values() if await route.admits(scope)]
        if not reached:
            self.counters.authentication_failures += 1
            self.counters.violation()
            challenge = b'Bearer realm="mcp-barbican", error="invalid_token"'
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
                except ConfigError as exc:
                    logger.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    logger.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_app(config: ProxyConfig) -> tuple[ASGIApp, BarbicanApp]:
    """The whole data plane, outermost layer first, and the core for the runner to manage."""
    core = BarbicanApp(config)
    allowed = AllowedHosts.build(config.server.host, config.server.allowed_hosts)
    app: ASGIApp = HostOriginGuard(core, allowed=allowed, origin_allowed=core.origin_allowed, counters=core.counters)
    app = ClientAddress(app, trusted=core.shields.trusted)
    own = {mcp.id: mcp.security.headers for mcp in config.mcps if mcp.security is not None}
    core.security_headers = SecurityHeaders(app, config=config.server.security.headers, per_mcp=own)
    return core.security_headers, core
