"""The control plane: the table of served MCPs and the live config, changed only here.

Every change (a registration through the admin API, a config reload, start-up's stored
registrations) is one `ControlPlane.change()` block, under one lock. Within it, new routes
are built and their JWT verifiers started first; then, with no await in between, the table,
the config and everything derived from it (the shields' config, session quota limits, the
admin guard, per-MCP security headers) switch at once, and the new runtimes start; last, the
routes they replaced are retired (their sessions end). A failure before the switch closes
what was built and changes nothing. The router reads `routes`, a plain dict mutated in place
only here, with one lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from mcp_barbican import egress
from mcp_barbican.asgi import get_header
from mcp_barbican.config import McpConfig, ProxyConfig
from mcp_barbican.security.addresses import client_ip
from mcp_barbican.security.auth import AuthFailure, Verifier, bearer_credential
from mcp_barbican.security.authorization import ANONYMOUS
from mcp_barbican.security.callguard import CallGuard
from mcp_barbican.security.mtls import CertificateIdentity
from mcp_barbican.server.endpoint import McpEndpoint
from mcp_barbican.server.runtime import McpRuntime

if TYPE_CHECKING:
    from mcp_barbican.admin.control import Source
    from mcp_barbican.security.headers import SecurityHeaders
    from mcp_barbican.security.principal import Principal
    from mcp_barbican.server.shields import Shields
    from mcp_barbican.types import Scope

__all__ = ["MCP_PREFIX", "Change", "ControlPlane", "McpRoute"]

MCP_PREFIX = "/mcp/"


class McpRoute:
    """One MCP's runtime, its guarded endpoint, and what the MCP list needs to know."""

    def __init__(self, mcp: McpConfig, config: ProxyConfig, shields: Shields, source: Source = "config") -> None:
        self.mcp = mcp
        guard = CallGuard.build(mcp.id, config.effective_integrity(mcp), shields.recording)
        pins = shields.pins.guard(mcp.id, config.effective_integrity(mcp))
        # The config file's upstreams are the operator's choice; the admin API's pass the egress policy.
        self.runtime = McpRuntime(
            mcp,
            idle_timeout=config.server.session_idle_timeout,
            quota=shields.sessions,
            egress=egress.installed() if source == "api" else None,
            guard=guard,
            pins=pins,
            audit=shields.recording,
        )
        self.runtime.sealer = shields.sealer
        self.auth = config.effective_auth(mcp)
        endpoint = McpEndpoint(
            self.runtime,
            limits=config.effective_security(mcp).limits,
            messages_path=f"{MCP_PREFIX}{mcp.id}/messages",
            audit=shields.recording,
        )
        self.app, self.authenticator, self.cors, self._addresses, self.authorizer = shields.protect(
            endpoint, mcp, config
        )

    def addresses_admit(self, scope: Scope) -> bool:
        """Whether this MCP's own address lists let the request's client through (for the MCP list)."""
        return self._addresses is None or self._addresses.admits(client_ip(scope))

    def allows_anything(self, principal: Principal | None) -> bool:
        """Whether this MCP's authorization lets the caller use anything (for the MCP list)."""
        return self.authorizer.allows_anything(principal or ANONYMOUS)

    async def verdict(self, scope: Scope) -> Principal | AuthFailure | None:
        """What this MCP's authentication makes of the request's credential (None: it has none)."""
        if self.authenticator is None:
            return None
        if isinstance(self.authenticator, CertificateIdentity):
            return self.authenticator.of_scope(scope)
        raw = get_header(scope, self.auth.header.lower().encode("latin-1"))
        credential = bearer_credential(raw.decode("latin-1") if raw is not None else None, self.auth.prefix)
        if isinstance(credential, AuthFailure):
            return credential
        return await self.authenticator.authenticate(credential)


def _with_mcps(config: ProxyConfig, mcps: tuple[McpConfig, ...]) -> ProxyConfig:
    return ProxyConfig.model_construct(server=config.server, mcps=mcps)


class ControlPlane:
    """The served MCPs (route, runtime, source per id) and the live config; see the module's doc."""

    def __init__(self, config: ProxyConfig, shields: Shields) -> None:
        self.config = config
        self.shields = shields
        #: Served MCPs by id: the router's table.
        self.routes: dict[str, McpRoute] = {mcp.id: McpRoute(mcp, config, shields) for mcp in config.mcps}
        self.sources: dict[str, Source] = dict.fromkeys(self.routes, "config")
        #: The outermost layer, set when the app is built, told about each MCP's own headers.
        self.headers: SecurityHeaders | None = None
        #: Called in the switch when a change replaces the server section (the admin guard rebuilds).
        self.on_server_change: list[Callable[[ProxyConfig], None]] = []
        #: Called in the switch when a change serves, swaps or drops an MCP (the aggregated sessions hear of it).
        self.on_routes_change: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()

    # -- the admin API's view (admin.control.ControlPlane) ---------------------------------

    @property
    def runtimes(self) -> Mapping[str, McpRuntime]:
        return {mcp_id: route.runtime for mcp_id, route in self.routes.items()}

    def source(self, mcp_id: str) -> Source | None:
        return self.sources.get(mcp_id)

    # -- changes ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """One change, applied when the block ends, or not at all if it raises or `abandon`s."""
        async with self._lock:
            change = Change(self)
            try:
                yield change
            except BaseException:
                await change.discard()
                raise
            if change.abandoned:
                await change.discard()
                return
            retired = change.switch()
            for route in retired:
                await self._retire(route)

    def build(self, mcp: McpConfig, config: ProxyConfig, source: Source = "config") -> McpRoute:
        """A route built against `config` (not yet served), which need not be the live one."""
        return McpRoute(mcp, config, self.shields, source)

    async def _retire(self, route: McpRoute) -> None:
        await route.runtime.aclose()
        if isinstance(route.authenticator, Verifier):
            await route.authenticator.aclose()
            with contextlib.suppress(ValueError):
                self.shields.verifiers.remove(route.authenticator)

    def _set_headers(self, mcp_id: str, mcp: McpConfig | None) -> None:
        """An MCP's own security headers (None: the server's, or it is gone)."""
        if self.headers is not None:
            own = mcp.security.headers if mcp is not None and mcp.security is not None else None
            self.headers.set_mcp(mcp_id, own)


class Change:
    """What one `ControlPlane.change()` block serves, swaps and drops, and the config it leaves."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        #: The config once this change is applied.
        self.config = plane.config
        self.abandoned = False
        self._built: dict[str, tuple[McpRoute, Source]] = {}
        self._dropped: set[str] = set()

    def configure(self, config: ProxyConfig) -> None:
        """Make `config` the live config (its MCPs are served, swapped or dropped one by one)."""
        self.config = config

    async def serve(self, mcp: McpConfig, source: Source) -> None:
        """Build `mcp`'s route and start its verifier; it replaces a route served under its id when applied."""
        if self.config.mcp(mcp.id) != mcp:
            self.config = _with_mcps(self.config, (*(m for m in self.config.mcps if m.id != mcp.id), mcp))
        previous = self._built.pop(mcp.id, None)
        if previous is not None:
            await self._plane._retire(previous[0])
        route = self._plane.build(mcp, self.config, source)
        self._built[mcp.id] = (route, source)
        self._dropped.discard(mcp.id)
        if isinstance(route.authenticator, Verifier):
            await route.authenticator.start()

    async def swap(self, mcp: McpConfig) -> None:
        """Serve a served MCP's new definition under the same source (its sessions end when applied)."""
        source = self._plane.sources.get(mcp.id)
        if source is None:
            raise KeyError(mcp.id)
        await self.serve(mcp, source)

    async def drop(self, mcp_id: str) -> None:
        """Stop serving `mcp_id` and remove it from the config (its sessions end when applied)."""
        self.config = _with_mcps(self.config, tuple(m for m in self.config.mcps if m.id != mcp_id))
        built = self._built.pop(mcp_id, None)
        if built is not None:
            await self._plane._retire(built[0])
        self._dropped.add(mcp_id)

    def abandon(self) -> None:
        """Apply nothing of this change when its block ends."""
        self.abandoned = True

    async def discard(self) -> None:
        """Close what this change built (its runtimes never started)."""
        built, self._built = self._built, {}
        for route, _ in built.values():
            await self._plane._retire(route)

    def switch(self) -> list[McpRoute]:
        """Apply the change at once (no await): table, config and what derives from it; the replaced routes."""
        plane = self._plane
        shields = plane.shields
        retired: list[McpRoute] = []
        for mcp_id in self._dropped:
            gone = plane.routes.pop(mcp_id, None)
            plane.sources.pop(mcp_id, None)
            if gone is not None:
                retired.append(gone)
                plane._set_headers(mcp_id, None)
        for mcp_id, (route, source) in self._built.items():
            replaced = plane.routes.get(mcp_id)
            if replaced is not None:
                retired.append(replaced)
            plane.routes[mcp_id] = route
            plane.sources[mcp_id] = source
            plane._set_headers(mcp_id, route.mcp)
        old = plane.config
        plane.config = shields.config = self.config
        if self.config.server != old.server:
            shields.sessions.configure(self.config.server.limits)
            for listener in plane.on_server_change:
                listener(self.config)
        for route, _ in self._built.values():
            route.runtime.start()
        if self._built or self._dropped:
            for announce in plane.on_routes_change:
                announce()
        self._built = {}
        return retired
