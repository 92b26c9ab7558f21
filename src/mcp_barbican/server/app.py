"""The data-plane ASGI application: routing, health, the MCP list and OAuth metadata.

The outer security layers are stacked in `build_app`, each MCP's in its pipeline
(`security/pipeline.py`, from `shields.py`); this module routes:
`/mcp/{id}[/sse|/messages]` to each MCP's guarded endpoint, `/api/v1/mcp/list`,
`/.well-known/oauth-protected-resource/mcp/{id}`, `/admin/*` to the admin guard (which
applies the dynamic IP rules and bans its own way), and the health routes, which alone skip
the dynamic IP rules.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mcp_barbican import egress
from mcp_barbican.admin import AdminApp
from mcp_barbican.alerts import Alerts, check_webhook_urls
from mcp_barbican.asgi import get_header, json_error, query_param, respond_json
from mcp_barbican.audit import AuditEvent, AuditTrail, EventFeed, build_sinks
from mcp_barbican.egress import Egress
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.logs import log_unexpected
from mcp_barbican.security.addresses import IpSet
from mcp_barbican.security.admin import AdminGuard, ConsoleLogins, admin_tokens
from mcp_barbican.security.client_ip import ClientAddress
from mcp_barbican.security.console import Revocations
from mcp_barbican.security.cors import CORS
from mcp_barbican.security.headers import SecurityHeaders
from mcp_barbican.security.hosts import AllowedHosts, HostOriginGuard
from mcp_barbican.security.ipfilter import IpVerdict, decide
from mcp_barbican.security.oauth import (
    WELL_KNOWN_PATH,
    metadata_url,
    protected_resource_metadata,
    resource_for,
    www_authenticate,
)
from mcp_barbican.security.tokens import check_listed_ids
from mcp_barbican.server.access import AccessLog, flush_writer
from mcp_barbican.server.aggregate.endpoint import AGGREGATE_PATHS, FanEndpoint
from mcp_barbican.server.aggregate.runtime import FanRuntime
from mcp_barbican.server.control import MCP_PREFIX, ControlPlane
from mcp_barbican.server.reach import Reach, reach, refuse_unreached
from mcp_barbican.server.registry import Registry
from mcp_barbican.server.seal import configured_keys, owned_elsewhere
from mcp_barbican.server.shields import Shields, resource_url
from mcp_barbican.storage import open_storage
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.config import AuthConfig, ProxyConfig
    from mcp_barbican.server.tracing import Tracing
    from mcp_barbican.server.tunnel import Tunnel

__all__ = ["BarbicanApp", "build_app"]

logger = logging.getLogger(__name__)

_PREFIX = MCP_PREFIX
_PRM_PREFIX = f"{WELL_KNOWN_PATH}/mcp/"
_PRM_AGGREGATE = f"{WELL_KNOWN_PATH}/mcp"
_NO_ADDRESSES = IpSet.build(())


class BarbicanApp:
    """Routes `/mcp/{id}[/sse|/messages]`, the MCP list and health; runs the MCP runtimes."""

    def __init__(self, config: ProxyConfig) -> None:
        self.storage = open_storage(config.server.storage)
        audit = config.server.audit
        sinks = build_sinks(audit, config.server.storage, self.storage)
        #: Live security events for /admin/events and the alerts: a sink of the trail, so there is one only when
        #: the trail records (configured alerts make it record, with no other sink); None: no live events.
        self.feed = EventFeed() if sinks or config.server.alerts.webhooks else None
        if self.feed is not None:
            sinks.append(self.feed)
        self.audit = AuditTrail(sinks, queue_size=audit.queue_size, arguments=audit.arguments)
        #: What the proxy may fetch on its own account; everything that fetches reads the installed one.
        self.egress = Egress(config.server.egress, on_refused=self._egress_refused)
        egress.install(self.egress)
        check_webhook_urls(config.server.alerts)
        self.shields = Shields(config, store=self.storage, audit=self.audit)
        self.counters = self.shields.counters
        #: The served MCPs and the live config: only the control plane changes them.
        self.control = ControlPlane(config, self.shields)
        #: The router's table (the control plane's dict, changed in place).
        self.routes = self.control.routes
        self.registry = Registry(self.control, self.storage)
        self.admin_app = AdminApp(self)
        #: Console sessions logged out before they expired (kept across config reloads).
        self.console_logouts = Revocations()
        self.rebuild_admin()
        self.control.on_server_change.append(lambda _config: self.rebuild_admin())
        #: Every route but health and /admin, behind the dynamic IP rules: set by build_app.
        self.guarded: ASGIApp = _unassembled
        #: Coroutine functions run for the life of the app (e.g. the TLS certificate reloader).
        self.background: list[Callable[[], Awaitable[None]]] = []
        self._background_tasks: list[asyncio.Task[None]] = []
        self.listing = self.shields.static_filter(self._mcp_list_app, config.server.security)
        #: /mcp, /sse and /messages: every MCP the caller may use, behind one endpoint.
        self.aggregate = FanRuntime(
            idle_timeout=config.server.session_idle_timeout,
            start_timeout=max((mcp.start_timeout for mcp in config.mcps), default=30.0),
            quota=self.shields.sessions,
        )
        limits = config.server.security.limits
        self.aggregated = FanEndpoint(
            self.aggregate,
            self.routes,
            self.shields,
            limits=limits,
            audit=self.shields.recording,
            challenge=self._aggregate_challenge,
        )
        self.aggregate.sealer = self.shields.sealer
        self._reconfigure_aggregate(config)
        self.control.on_routes_change.append(self.aggregate.announce_change)
        self.control.on_server_change.append(self._reconfigure_aggregate)
        self.control.on_server_change.append(lambda config: self.shields.sealer.set_keys(configured_keys(config)))
        self.control.on_server_change.append(lambda config: self.egress.configure(config.server.egress))
        self.tunnel = self._tunnel(config)
        #: The tracing layer when server.telemetry is set (build_app adds it); its spans are flushed at shutdown.
        self.tracing: Tracing | None = None
        self.alerts = Alerts(config.server.alerts, sent=self.counters.alerts_sent, failed=self.counters.alerts_failed)
        if self.feed is not None:
            self.feed.listeners.append(self.alerts.observe)
        self.control.on_server_change.append(self._reconfigure_alerts)

    def _reconfigure_alerts(self, config: ProxyConfig) -> None:
        if config.server.alerts.webhooks and self.feed is None:
            logger.warning("server.alerts: takes effect at the next restart (the audit trail was off at start-up)")
        self.alerts.configure(config.server.alerts)

    def _egress_refused(self, target: str, reason: str, purpose: str) -> None:
        self.counters.egress_refused += 1
        details = {"purpose": purpose, "reason": reason}
        self.audit.emit_soon(
            AuditEvent("egress", "egress.refused", False, resource=target, error=reason, details=details)
        )

    def _tunnel(self, config: ProxyConfig) -> Tunnel | None:
        """Requests for sessions another replica owns go to it through Redis (sealed ids and Redis needed)."""
        storage = config.server.storage
        if storage.type != "redis" or storage.url is None:
            return None
        if not self.shields.sealer.active:
            logger.info("server.session_keys is not set: a session continues only on the replica that opened it")
            return None
        from mcp_barbican.server.tunnel import Tunnel  # redis-py is loaded only by those who use it

        url = storage.url.get_secret_value()
        return Tunnel(url, key_prefix=storage.key_prefix, sealer=self.shields.sealer, serve=lambda: self.guarded)

    def _owner_elsewhere(self, scope: Scope) -> str | None:
        """The replica that alone serves the request's session, when that is another one."""
        if self.tunnel is None:
            return None
        header = get_header(scope, b"mcp-session-id")
        session_id = header.decode("latin-1") if header is not None else query_param(scope, "session_id")
        owner = owned_elsewhere(session_id, self.tunnel.replica) if session_id else None
        if owner is None or self.shields.sealer.open(session_id or "") is None:
            return None
        return owner

    @property
    def config(self) -> ProxyConfig:
        """The live config (the control plane's)."""
        return self.control.config

    def rebuild_admin(self) -> None:
        """The admin guard for the current `server.admin` (at start and on reload)."""
        admin = self.config.server.admin
        self.admin_ips = IpSet.build(admin.ip_whitelist)
        guard = functools.partial(
            AdminGuard,
            tokens=admin_tokens(admin),
            address_verdict=self._admin_address,
            counters=self.counters,
            audit=self.shields.recording,
            on_failure=self.shields.record_failure,
        )
        public_url = self.config.server.public_url
        secure = public_url is not None and str(public_url).startswith("https:")
        console = ConsoleLogins(admin.ui.session_lifetime, self.console_logouts, secure) if admin.ui.enabled else None
        self.admin = guard(self.admin_app, console=console)
        #: /readyz names what is not ready only to an admin credential from an admin address.
        self.readiness_detail = guard(self._readyz_detail)

    def _admin_address(self, ip: str | None) -> IpVerdict:
        """The admin list, and dynamic denies and bans; dynamic allows never widen the admin list."""
        dynamic = self.shields.dynamic
        return decide(
            ip, whitelist=self.admin_ips, blacklist=_NO_ADDRESSES, dynamic=dynamic, now=time.time(), dynamic_allow=False
        )

    async def startup(self) -> None:
        asyncio.get_running_loop().set_exception_handler(log_loop_error)
        self.audit.start()
        await self.shields.start()  # loads the issued tokens
        check_listed_ids(self.config, self.shields.issued)
        for route in self.routes.values():
            route.runtime.start()
        self.aggregate.start()
        await self.registry.start()  # serves the stored registrations, then follows the store
        if self.tunnel is not None:
            await self.tunnel.start()
        self._background_tasks = [asyncio.ensure_future(job()) for job in self.background]
        self.alerts.start()

    async def shutdown(self) -> None:
        for task in self._background_tasks:
            task.cancel()
        await self.registry.stop()
        if self.tunnel is not None:
            await self.tunnel.aclose()
        await self.aggregate.aclose()
        for route in list(self.routes.values()):
            await route.runtime.aclose()
        await self.shields.stop()
        await self.audit.aclose()
        await self.alerts.aclose()
        await self.storage.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()
        flush_writer()

    def origin_allowed(self, scope: Scope, origin: str) -> bool:
        """Origins an MCP's CORS policy admits pass the DNS-rebinding Origin check on its routes."""
        path: str = scope["path"]
        if path in AGGREGATE_PATHS:
            return self.aggregate_cors is not None and self.aggregate_cors.allows(origin)
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
            await self._readyz(scope, receive, send)
        elif self._is_admin_path(path) and self._on_admin_listener(scope):
            await self.admin(scope, receive, send)  # its guard applies the dynamic rules, bans its own way
        else:
            await self.guarded(scope, receive, send)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if self.config.server.admin.port is not None and self._on_admin_listener(scope) != self._is_admin_path(path):
            # The admin API has its own listener: only it serves /admin, and it serves nothing else.
            await json_error(send, 404, "not_found", f"no route for {path} on this listener")
            return
        if path.startswith(_PREFIX):
            mcp_id, _, rest = path[len(_PREFIX) :].partition("/")
            route = self.routes.get(mcp_id)
            if route is None:
                await json_error(send, 404, "unknown_mcp", f"no MCP with id {mcp_id!r}")
                return
            owner = self._owner_elsewhere(scope)
            if owner is not None:
                assert self.tunnel is not None
                limit = self.config.effective_security(route.mcp).limits.max_body_size
                await self.tunnel.forward(scope, receive, send, owner, limit)
                return
            scope["mcp_barbican.subpath"] = f"/{rest}" if rest else ""
            await route.app(scope, receive, send)
        elif path in AGGREGATE_PATHS:
            owner = self._owner_elsewhere(scope)
            if owner is not None:
                assert self.tunnel is not None
                limit = self.config.server.security.limits.max_body_size
                await self.tunnel.forward(scope, receive, send, owner, limit)
                return
            scope["mcp_barbican.subpath"] = AGGREGATE_PATHS[path]
            await self.aggregated_app(scope, receive, send)
        elif path == "/metrics":  # server.metrics.public: the admin API's handler, without its guard
            await self.admin_app(scope, receive, send)
        elif path == "/api/v1/mcp/list":
            await self.listing(scope, receive, send)
        elif path.startswith(_PRM_PREFIX):
            await self._resource_metadata(scope, send, path[len(_PRM_PREFIX) :])
        elif path == _PRM_AGGREGATE:
            await self._resource_metadata(scope, send, None)
        else:
            await json_error(send, 404, "not_found", f"no route for {path}")

    def _on_admin_listener(self, scope: Scope) -> bool:
        """Whether the request came to the listener that serves /admin (the only one without admin.port)."""
        admin_port = self.config.server.admin.port
        if admin_port is None:
            return True
        server = scope.get("server")
        return server is not None and server[1] == admin_port

    def _is_admin_path(self, path: str) -> bool:
        """The admin API, and /metrics unless server.metrics.public opens it."""
        if path == "/metrics":
            return not self.config.server.metrics.public
        return path == "/admin" or path.startswith("/admin/")

    async def _resource_metadata(self, scope: Scope, send: Send, mcp_id: str | None) -> None:
        """RFC 9728 metadata of an MCP whose clients authenticate with OAuth (None: /mcp, with server.auth)."""
        if mcp_id is None:
            auth: AuthConfig | None = self.config.server.auth
        else:
            route = self.routes.get(mcp_id)
            auth = route.auth if route is not None else None
        if auth is None or auth.oauth2 is None or auth.type != "oauth2":
            where = "/mcp" if mcp_id is None else f"/mcp/{mcp_id}"
            await json_error(send, 404, "not_found", f"no OAuth protected resource at {where}")
            return
        resource = resource_for(auth.oauth2, self.config.server.public_url, mcp_id) or resource_url(scope, mcp_id)
        await respond_json(send, 200, protected_resource_metadata(resource, auth.oauth2, auth.jwt))

    def _reconfigure_aggregate(self, config: ProxyConfig) -> None:
        """/mcp takes the server section's address lists, CORS and limits (at start and on reload).

        Each MCP's own policies apply to every message bound for it (aggregate/gate.py); what
        answers the browser before any MCP is asked (a preflight, the response's CORS headers) is
        the server's, since `/mcp` is the server's route.
        """
        security = config.server.security
        self.aggregated.limits = security.limits
        self.aggregated.max_body_size = security.limits.max_body_size
        app: ASGIApp = self.aggregated
        make_cors = self.shields.cors_policy(security)
        cors = make_cors(app) if make_cors is not None else None
        self.aggregate_cors = cors.policy if isinstance(cors, CORS) else None
        self.aggregated_app = self.shields.static_filter(cors if cors is not None else app, security)

    def _aggregate_challenge(self, scope: Scope) -> bytes:
        """The WWW-Authenticate of a 401 on /mcp: with RFC 9728 metadata when server.auth is OAuth."""
        auth = self.config.server.auth
        metadata = None
        if auth is not None and auth.type == "oauth2" and auth.oauth2 is not None:
            resource = resource_for(auth.oauth2, self.config.server.public_url, None) or resource_url(scope, None)
            metadata = metadata_url(resource)
        return www_authenticate("mcp-barbican", error="invalid_token", resource_metadata=metadata).encode("latin-1")

    async def _mcp_list_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._mcp_list(scope, send)

    async def _mcp_list(self, scope: Scope, send: Send) -> None:
        """The MCPs the presented credential reaches and may use something of (server/reach.py)."""
        found = await reach(self.routes.values(), scope)
        if await refuse_unreached(self.shields, scope, send, found):
            return
        assert isinstance(found, Reach)
        listing = [
            {
                "id": r.mcp.id,
                "transport": r.mcp.transport,
                "status": r.runtime.status,
                "tool_count": r.runtime.tool_count,
            }
            for r, _principal in found.routes
        ]
        await respond_json(send, 200, {"mcps": listing, "count": len(listing)})

    def _not_ready(self) -> list[dict[str, str]]:
        return [
            {"id": r.id, "status": r.status}
            for r in (route.runtime for route in self.routes.values())
            if r.mcp.required and r.status != "ready"
        ]

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._not_ready():
            await respond_json(send, 200, {"status": "ready"})
        elif get_header(scope, b"authorization") is not None:
            await self.readiness_detail(scope, receive, send)  # wrong credentials count like any other
        else:
            await respond_json(send, 503, {"status": "not ready"})

    async def _readyz_detail(self, scope: Scope, receive: Receive, send: Send) -> None:
        waiting = self._not_ready()
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
                    log_unexpected(logger, "start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def log_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What the event loop cannot hand to anyone (a transport failing after its peer left), as one line.

    asyncio's default handler logs a traceback; none may reach the log (a failure is one line).
    """
    exc = context.get("exception")
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    logger.warning("%s%s", context.get("message", "event loop error"), detail)


async def _unassembled(scope: Scope, receive: Receive, send: Send) -> None:
    await json_error(send, 500, "not_assembled", "this app was not built by build_app")


def build_app(config: ProxyConfig) -> tuple[ASGIApp, BarbicanApp]:
    """The whole data plane and the core for the runner to manage.

    The outer order is written here once (each MCP's own order is its security pipeline's,
    security/pipeline.py): tracing (server.telemetry) -> access log -> security headers -> client
    address -> Host/Origin guard -> the core, which answers health itself, sends /admin to the admin
    guard (it applies the dynamic rules and bans its own way), and every other route through the
    dynamic IP rules and bans.
    """
    core = BarbicanApp(config)
    core.guarded = core.shields.dynamic_filter(core.route)
    allowed = AllowedHosts.build(config.server.host, config.server.allowed_hosts)
    app: ASGIApp = HostOriginGuard(core, allowed=allowed, origin_allowed=core.origin_allowed, counters=core.counters)
    app = ClientAddress(app, trusted=core.shields.trusted)
    own = {mcp.id: mcp.security.headers for mcp in config.mcps if mcp.security is not None}
    headers = core.control.headers = SecurityHeaders(app, config=config.server.security.headers, per_mcp=own)
    app = AccessLog(headers) if config.server.access_log else headers
    if config.server.telemetry is not None:
        from mcp_barbican.server.tracing import Tracing  # OpenTelemetry is imported only when traces are on

        app = core.tracing = Tracing(app, config.server.telemetry)
    return app, core
