"""MCPs added, replaced and removed at run time, and how they merge with the config file's.

The merge rule: the config file owns its ids. The admin API registers MCPs under new ids
only, and replaces or removes only the MCPs it registered (409 otherwise): an operator who
edits the file and an operator who calls the API can never undo each other in silence. A
stored registration whose id the file now also defines is not served; start-up logs it.

A change touches only its own MCP: the new route is built and started before it is swapped
in, so other MCPs' sessions never notice; a replaced or removed MCP's sessions end. Every
change is one `ControlPlane.change()` (server/control.py): all of it applies, or none.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican.config import McpConfig, ProxyConfig, check_files, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.tokens import check_listed_ids
from mcp_barbican.storage import McpRecord

if TYPE_CHECKING:
    from mcp_barbican.server.control import ControlPlane
    from mcp_barbican.storage import Storage

__all__ = ["Registry"]

logger = logging.getLogger(__name__)

#: Server settings a reload cannot change under a running listener.
RESTART_ONLY: Final = (
    "host", "port", "tls", "storage", "audit", "trusted_proxies", "allowed_hosts", "session_idle_timeout",
)  # fmt: skip
#: server.limits the listener reads once, when it starts (server/protocol.py).
LISTENER_LIMITS: Final = ("max_header_bytes", "max_headers", "header_timeout", "body_timeout", "max_connections")


def _effective(config: ProxyConfig, mcp: McpConfig) -> tuple[McpConfig, object, object, object]:
    """What an MCP's route is built from: itself and the defaults it inherits."""
    return (mcp, config.effective_auth(mcp), config.effective_security(mcp), config.effective_authorization(mcp))


class Registry:
    """The merge rule and the stored registrations; every change goes through the control plane."""

    def __init__(self, control: ControlPlane, storage: Storage) -> None:
        self.control = control
        self.storage = storage

    async def load(self) -> None:
        """Serve the registrations kept in storage (at start-up)."""
        for record in await self.storage.mcps.list():
            if record.id in self.control.sources:
                logger.warning("registered MCP %r is not served: the config file defines that id", record.id)
                continue
            try:
                mcp = self.validate(record.definition)
            except ConfigError as exc:
                logger.error("registered MCP %r is not served: %s", record.id, exc)
                continue
            async with self.control.change() as change:
                await change.serve(mcp, "api")

    def validate(self, definition: dict[str, Any]) -> McpConfig:
        """An MCP definition checked as the config file would check it, against the current config."""
        mcp = validate_model(McpConfig, definition)
        config = self.control.config
        others = tuple(m for m in config.mcps if m.id != mcp.id)
        merged = validate_model(ProxyConfig, {"server": config.server, "mcps": (*others, mcp)})
        check_listed_ids(merged, self.control.shields.issued)
        check_files(mcp)
        return mcp

    def _refused_transport(self, mcp: McpConfig) -> tuple[int, str] | None:
        if mcp.transport == "stdio" and not self.control.config.server.admin.allow_stdio:
            return 403, "stdio registrations start processes and are disabled (server.admin.allow_stdio: false)"
        return None

    async def create(self, definition: dict[str, Any]) -> tuple[int, str]:
        mcp = self.validate(definition)
        refused = self._refused_transport(mcp)
        if refused is not None:
            return refused
        async with self.control.change() as change:
            if mcp.id in self.control.sources:
                return 409, f"an MCP with id {mcp.id!r} exists"
            await change.serve(mcp, "api")  # built and started first: a failure stores nothing
            now = time.time()
            if not await self.storage.mcps.create(McpRecord(mcp.id, definition, now, now)):
                change.abandon()
                return 409, f"an MCP with id {mcp.id!r} exists"
        return 201, mcp.id

    async def replace(self, mcp_id: str, definition: dict[str, Any]) -> tuple[int, str]:
        mcp = self.validate({**definition, "id": mcp_id})
        refused = self._refused_transport(mcp)
        if refused is not None:
            return refused
        async with self.control.change() as change:
            refusal = self._owned(mcp_id)
            if refusal is not None:
                return refusal
            await change.swap(mcp)
            now = time.time()
            await self.storage.mcps.replace(McpRecord(mcp_id, {**definition, "id": mcp_id}, now, now))
        return 200, mcp_id

    async def delete(self, mcp_id: str) -> tuple[int, str]:
        async with self.control.change() as change:
            refusal = self._owned(mcp_id)
            if refusal is not None:
                return refusal
            await self.storage.mcps.delete(mcp_id)
            await change.drop(mcp_id)
        return 204, mcp_id

    def _owned(self, mcp_id: str) -> tuple[int, str] | None:
        source = self.control.sources.get(mcp_id)
        if source is None:
            return 404, f"no MCP with id {mcp_id!r}"
        if source == "config":
            return 409, f"MCP {mcp_id!r} is defined in the config file: change it there"
        return None

    async def apply_file(self, new: ProxyConfig) -> list[str]:
        """Apply a re-read config file: only what changed, leaving other MCPs' sessions alone.

        Raises ConfigError, changing nothing, when the new file needs a restart (listener,
        TLS, storage, audit ...), defines an id that the admin API registered, or an MCP's
        route cannot be built.
        """
        async with self.control.change() as change:
            old = self.control.config
            sources = self.control.sources
            changed = [
                f"server.{name}" for name in RESTART_ONLY if getattr(new.server, name) != getattr(old.server, name)
            ]
            if new.server.admin.port != old.server.admin.port:
                changed.append("server.admin.port")
            changed += [
                f"server.limits.{name}"
                for name in LISTENER_LIMITS
                if getattr(new.server.limits, name) != getattr(old.server.limits, name)
            ]
            if changed:
                raise ConfigError(f"{', '.join(changed)} changed: restart to apply (nothing was reloaded)")
            clash = sorted(m.id for m in new.mcps if sources.get(m.id) == "api")
            if clash:
                raise ConfigError(
                    f"{', '.join(clash)}: registered through the admin API; delete it there first", path="mcps"
                )
            registered = tuple(m for m in old.mcps if sources.get(m.id) == "api")
            merged = validate_model(ProxyConfig, {"server": new.server, "mcps": (*new.mcps, *registered)})
            check_listed_ids(merged, self.control.shields.issued)
            before = {m.id: _effective(old, m) for m in old.mcps}
            change.configure(merged)
            changes: list[str] = []
            for mcp_id in [i for i, source in sources.items() if source == "config" and merged.mcp(i) is None]:
                await change.drop(mcp_id)
                changes.append(f"removed {mcp_id}")
            for mcp in merged.mcps:
                if mcp.id not in before:
                    await change.serve(mcp, "config")
                    changes.append(f"added {mcp.id}")
                elif before[mcp.id] != _effective(merged, mcp):
                    await change.swap(mcp)
                    changes.append(f"replaced {mcp.id}")
        return changes
