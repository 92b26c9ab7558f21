"""Hot reload: re-read the config file on SIGHUP and whenever it changes; apply it only if valid.

A file that fails to load or validate changes nothing: the error is logged (with its key
path) and audited, and the running config keeps serving. A valid one is applied MCP by MCP
(`Registry.apply_file`): unchanged MCPs keep their sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_barbican.audit import AuditEvent
from mcp_barbican.exceptions import ConfigError

if TYPE_CHECKING:
    from mcp_barbican.audit import AuditTrail
    from mcp_barbican.config import ProxyConfig
    from mcp_barbican.server.registry import Registry

__all__ = ["Reloader", "Stamp", "file_stamp"]

logger = logging.getLogger(__name__)

Stamp = tuple[int, int, int]


def file_stamp(path: Path) -> Stamp | None:
    """What tells a changed file apart: modification time, size, inode (None if it cannot be read)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class Reloader:
    def __init__(
        self,
        registry: Registry,
        audit: AuditTrail,
        path: Path,
        load: Callable[[], ProxyConfig],
        *,
        interval: float = 1.0,
        seen: Stamp | None = None,
    ) -> None:
        self.registry = registry
        self.audit = audit
        self.path = path
        self.load = load
        self.interval = interval
        self._signalled = asyncio.Event()
        #: The file as it was when the running config was loaded, if known before `run`: a worker
        #: forked later from a supervisor that loaded the file reloads a change made since.
        self._seen = seen
        # Taken when the app is built, not when it starts: a worker forked later (a restart under
        # `serve --workers`) still sees a change made since its config was loaded, and reloads.
        self._seen = self._stamp()

    def _stamp(self) -> Stamp | None:
        return file_stamp(self.path)

    async def run(self) -> None:
        """Watch until cancelled (a background job of the app)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._signalled.set)
        seen = self._seen
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._signalled.wait(), self.interval)
                stamp = self._stamp()
                if self._signalled.is_set():
                    self._signalled.clear()
                    seen = stamp
                    await self.reload("SIGHUP")
                elif stamp != seen and stamp is not None:
                    seen = stamp
                    await self.reload("file change")
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)

    async def reload(self, trigger: str) -> bool:
        try:
            config = await asyncio.to_thread(self.load)
            changes = await self.registry.apply_file(config)
        except ConfigError as exc:
            error = "; ".join(exc.lines())  # every error of the file, on the one log line
            logger.error("config reload (%s) refused, the running config stays: %s", trigger, error)
            await self._audit(trigger, False, error, [])
            return False
        logger.info("config reloaded (%s): %s", trigger, ", ".join(changes) or "no MCP changed")
        await self._audit(trigger, True, None, changes)
        return True

    async def _audit(self, trigger: str, success: bool, error: str | None, changes: list[str]) -> None:
        details = {"trigger": trigger, "changes": changes}
        event = AuditEvent("config_reload", "reload", success, str(self.path), error=error, details=details)
        await self.audit.emit(event)
