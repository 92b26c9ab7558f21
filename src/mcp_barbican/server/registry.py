"""MCPs added, replaced and removed at run time, and how they merge with the config file's.

The merge rule: the config file owns its ids. The admin API registers MCPs under new ids
only, and replaces or removes only the MCPs it registered (409 otherwise): an operator who
edits the file and an operator who calls the API can never undo each other in silence. A
stored registration whose id the file also defines (another replica registered it, or the
file took the id since) is not served, and is logged once.

A change touches only its own MCP: the new route is built and started before it is swapped
in, so other MCPs' sessions never notice; a replaced or removed MCP's sessions end. Every
change is one `ControlPlane.change()` (server/control.py): all of it applies, or none.

The registry follows the store's `mcps` table (`start`): the registrations stored at start-up,
and every change told afterwards, are applied one id at a time by one task, checked as a local
registration is (`decide` says what a change means). A shared store (Redis) tells the changes
of other replicas, and of this one: applying is idempotent, so the echo of a local change (or
a catch-up that tells every record again) restarts nothing. A stored record that fails the
checks is logged once, in one line, and not applied: an MCP served before keeps its previous
definition, so a bad write elsewhere never stops what runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Literal

from mcp_barbican import egress
from mcp_barbican.config import McpConfig, ProxyConfig, check_files, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.logs import log_unexpected
from mcp_barbican.security.tokens import check_listed_ids
from mcp_barbican.storage import McpRecord
from mcp_barbican.storage.notices import Unsubscribe, follow

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mcp_barbican.admin.control import Source
    from mcp_barbican.server.control import ControlPlane
    from mcp_barbican.storage import Change, Storage

__all__ = ["Registry", "Step", "decide"]

logger = logging.getLogger(__name__)

#: Server settings a reload cannot change under a running listener.
RESTART_ONLY: Final = (
    "host", "port", "tls", "storage", "audit", "trusted_proxies", "allowed_hosts", "session_idle_timeout",
    "telemetry", "access_log",
)  # fmt: skip
#: server.limits the listener reads once, when it starts (server/protocol.py).
LISTENER_LIMITS: Final = ("max_header_bytes", "max_headers", "header_timeout", "body_timeout", "max_connections")


def _effective(config: ProxyConfig, mcp: McpConfig) -> tuple[McpConfig, object, object, object]:
    """What an MCP's route is built from: itself and the defaults it inherits."""
    return (mcp, config.effective_auth(mcp), config.effective_security(mcp), config.effective_authorization(mcp))


#: What a stored registration's change does here: serve a new MCP, swap a served one's definition, drop it,
#: nothing (the same definition is served already, or a removal of what is not served), or nothing because
#: the config file owns the id.
Step = Literal["serve", "swap", "drop", "nothing", "config"]
_APPLIED: Final[dict[Step, str]] = {
    "serve": "served (stored registration)",
    "swap": "replaced by its stored definition (its sessions end)",
    "drop": "removed (its stored registration was deleted)",
    "nothing": "unchanged",
    "config": "unchanged",
}


def decide(source: Source | None, served: McpConfig | None, wanted: McpConfig | None) -> Step:
    """The step for a change to the stored registration of one id.

    `source` and `served`: who serves the id here now, and the definition served (None: not served);
    `wanted`: the stored definition, checked (None: the registration was removed).
    """
    if source == "config":
        return "nothing" if wanted is None else "config"
    if wanted is None:
        return "nothing" if source is None else "drop"
    if source is None:
        return "serve"
    return "nothing" if wanted == served else "swap"


class Registry:
    """The merge rule and the stored registrations; every change goes through the control plane."""

    def __init__(self, control: ControlPlane, storage: Storage) -> None:
        self.control = control
        self.storage = storage
        #: Changes told by the store and not applied yet: the latest record per id (None: removed).
        self._pending: dict[str, McpRecord | None] = {}
        self._wake = asyncio.Event()
        #: The definition last refused per id, so a record told again (a catch-up) is not logged again.
        self._refused: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._unfollow: Unsubscribe | None = None

    # -- following the store -----------------------------------------------------------------

    async def start(self) -> None:
        """Serve the registrations kept in storage, then apply every change the store tells (at start-up)."""
        self._unfollow = await follow(self.storage.mcps, self._loaded, self._told)
        await self._apply_pending()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None

    def _loaded(self, records: Iterable[McpRecord]) -> None:
        for record in records:
            self._pending[record.id] = record

    def _told(self, change: Change[McpRecord]) -> None:
        self._pending[change.id] = change.record
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._apply_pending()

    async def _apply_pending(self) -> None:
        while self._pending:
            mcp_id = next(iter(self._pending))
            try:
                await self._apply(mcp_id)
            except Exception:
                log_unexpected(logger, "registered MCP %r: applying its stored change failed", mcp_id)

    async def _apply(self, mcp_id: str) -> None:
        """Apply the latest stored change of `mcp_id`, taken under the control plane's lock."""
        async with self.control.change() as change:
            if mcp_id not in self._pending:
                change.abandon()
                return
            record = self._pending.pop(mcp_id)
            source = self.control.sources.get(mcp_id)
            wanted = None if record is None else self._checked(record, served=source is not None)
            if record is not None and wanted is None:  # refused, and logged
                change.abandon()
                return
            route = self.control.routes.get(mcp_id)
            step = decide(source, None if route is None else route.mcp, wanted)
            if step == "config":
                what = "is not served: the config file defines that id"
                self._refuse(mcp_id, None if record is None else record.definition, what, level=logging.WARNING)
            else:
                self._refused.pop(mcp_id, None)
            if step in ("nothing", "config"):
                change.abandon()
                return
            if step == "drop":
                await change.drop(mcp_id)
            elif wanted is not None:
                await (change.serve(wanted, "api") if step == "serve" else change.swap(wanted))
        logger.info("registered MCP %r: %s", mcp_id, _APPLIED[step])

    def _checked(self, record: McpRecord, *, served: bool) -> McpConfig | None:
        """The stored definition checked as a registration through the API is; None (logged once) if refused."""
        definition = record.definition
        try:
            if not isinstance(definition, dict):
                raise ConfigError("the stored definition is not an object")
            if definition.get("id", record.id) != record.id:
                raise ConfigError(f"the stored definition names another id, {definition.get('id')!r}", path="id")
            mcp = self.validate({**definition, "id": record.id})
            refused = self._refused_transport(mcp)
            if refused is not None:
                raise ConfigError(refused[1])
            self._check_literal(mcp)
        except ConfigError as exc:
            reason = "; ".join(exc.lines())
            if served:
                what = f"is served unchanged: its stored change is refused ({reason})"
                self._refuse(record.id, definition, what, level=logging.ERROR)
            else:
                self._refuse(record.id, definition, f"is not served: {reason}", level=logging.ERROR)
            return None
        return mcp

    def _refuse(self, mcp_id: str, definition: Any, what: str, *, level: int) -> None:
        """One log line per refused definition (a catch-up that tells it again logs nothing)."""
        if mcp_id in self._refused and self._refused[mcp_id] == definition:
            return
        self._refused[mcp_id] = definition
        logger.log(level, "registered MCP %r %s", mcp_id, what)

    # -- the admin API's changes -------------------------------------------------------------

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

    @staticmethod
    def _check_literal(mcp: McpConfig) -> None:
        """A stored URL whose host is a refused IP literal: a name is checked when connecting (the pinned
        resolver), but aiohttp connects to a literal without asking a resolver."""
        if mcp.url is None:
            return
        try:
            egress.installed().check_literal(mcp.url, f"the stored registration of MCP {mcp.id!r}")
        except egress.EgressRefused as exc:
            raise ConfigError(str(exc), path="url") from None

    async def _check_egress(self, mcp: McpConfig) -> None:
        """An upstream URL the egress policy refuses (resolved now) is a ConfigError at `url`: answered 400."""
        if mcp.url is None:
            return
        try:
            await egress.installed().check_url(mcp.url, f"the registration of MCP {mcp.id!r}")
        except egress.EgressRefused as exc:
            raise ConfigError(str(exc), path="url") from None

    async def create(self, definition: dict[str, Any]) -> tuple[int, str]:
        mcp = self.validate(definition)
        await self._check_egress(mcp)
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
        await self._check_egress(mcp)
        refused = self._refused_transport(mcp)
        if refused is not None:
            return refused
        async with self.control.change() as change:
            refusal = self._owned(mcp_id)
            if refusal is not None:
                return refusal
            await change.swap(mcp)
            now = time.time()
            if not await self.storage.mcps.replace(McpRecord(mcp_id, {**definition, "id": mcp_id}, now, now)):
                change.abandon()  # another replica removed it; the removal's notice drops it here too
                return 404, f"no MCP with id {mcp_id!r}"
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
