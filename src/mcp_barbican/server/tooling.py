"""The proxy's own tool listings (the probe, `/admin/tools`, re-listing after `list_changed`) and how a runtime
follows its tool pins: list again through the control link when the upstream says its tools changed or the pins
were reset, and tell every session `notifications/tools/list_changed` when what clients may see changed."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamError
from mcp_barbican.security.tools import tool_allowed

if TYPE_CHECKING:
    from mcp_barbican.config import ToolFilter
    from mcp_barbican.security.pins import ToolPins
    from mcp_barbican.server.link import Link
    from mcp_barbican.server.runtime import McpRuntime

__all__ = ["MAX_TOOL_PAGES", "ToolWatch", "list_tools"]

logger = logging.getLogger(__name__)

#: Most tools/list pages the proxy follows in one listing of its own.
MAX_TOOL_PAGES: Final = 20
_LIST_CHANGED: Final = jsonrpc.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})


async def list_tools(
    link: Link, timeout: float, tool_filter: ToolFilter | None, pins: ToolPins | None = None
) -> list[dict[str, Any]]:
    """Every page of the listing (at most MAX_TOOL_PAGES) the filter lets through, then through the pins (a
    listing of every page is a full one: the pins decide removals and renames from it)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        response = await link.call("tools/list", {"cursor": cursor} if cursor else {}, timeout=timeout)
        result = response.get("result") or {}
        if link.tools.guard is not None:  # argument validators compiled from what the listing says
            link.tools.guard.learn(result)
        found += [
            tool
            for tool in result.get("tools") or []
            if isinstance(tool, dict) and tool_allowed(tool_filter, str(tool.get("name", "")))
        ]
        cursor = result.get("nextCursor")
        if not cursor:
            break
    if pins is not None and pins.active:
        return pins.screened(found, full=not cursor)
    return found


class ToolWatch:
    """One runtime's side of its tool pins."""

    def __init__(self, runtime: McpRuntime) -> None:
        self.runtime = runtime
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def start(self) -> None:
        pins = self.runtime.pins
        if pins is not None:
            pins.on_visible_change.append(self.announce)
            pins.on_forgotten.append(self.relist)

    def stop(self) -> None:
        pins = self.runtime.pins
        if pins is None:
            return
        for listeners, listener in ((pins.on_visible_change, self.announce), (pins.on_forgotten, self.relist)):
            if listener in listeners:
                listeners.remove(listener)

    def relist(self) -> None:
        """List the tools again through the control link, all pages (one listing at a time; a request meanwhile
        runs once more after it)."""
        runtime = self.runtime
        if runtime.status != "ready" or runtime.pins is None:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = runtime._spawn(self._relist(), f"relist-{runtime.id}")

    async def _relist(self) -> None:
        runtime = self.runtime
        self._again = True
        while self._again:
            self._again = False
            try:
                link = await runtime.control()
                await list_tools(link, runtime.mcp.request_timeout, runtime.mcp.tool_filter, runtime.pins)
            except (UpstreamError, OSError) as exc:
                logger.info("upstream %r: tools not listed again after a change: %s", runtime.id, exc)
                return

    def announce(self) -> None:
        """What clients may see changed (a pin approved, a tool held back): tell every session of the runtime."""
        for session in list(self.runtime.sessions.values()):
            if not session.closed:
                session.get_stream.push(_LIST_CHANGED)
