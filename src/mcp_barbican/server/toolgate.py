"""What one MCP holds its tools to on every link: the tool filter, the pins and the call guard.

One object per runtime, shared by all its links (isolated, shared, control, stateless), so the link
asks one place whether a tool is visible, whether a call's arguments pass, and what a listing or a
result becomes on its way to the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp_barbican.security.authorization import target
from mcp_barbican.security.tools import tool_allowed

if TYPE_CHECKING:
    from mcp_barbican.config import ToolFilter
    from mcp_barbican.jsonrpc import Message
    from mcp_barbican.security.callguard import CallGuard
    from mcp_barbican.security.pins import ToolPins
    from mcp_barbican.server.session import Session

__all__ = ["ToolGate"]


class ToolGate:
    """`tool_filter` (None: every tool), `guard` (None: no argument or result checks), `pins` (inactive: none);
    `on_changed` re-lists when the upstream says its tools changed (pins follow listings)."""

    __slots__ = ("guard", "on_changed", "pins", "tool_filter")

    def __init__(
        self,
        tool_filter: ToolFilter | None = None,
        *,
        guard: CallGuard | None = None,
        pins: ToolPins | None = None,
        on_changed: Callable[[], None] | None = None,
    ) -> None:
        self.tool_filter = tool_filter
        self.guard = guard
        self.pins = pins if pins is not None and pins.active else None
        self.on_changed = on_changed if self.pins is not None else None

    @property
    def watches_results(self) -> bool:
        return self.guard is not None and self.guard.watches_results

    def visible(self, params: Any) -> bool:
        """Whether a `tools/call` with these params names a tool the client may see."""
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str) or self.pins is not None and name in self.pins.hidden:
            return False
        return tool_allowed(self.tool_filter, name)

    def refused_arguments(self, session: Session, msg: Message, asked: Message | None) -> str | None:
        """Why a `tools/call`'s arguments are refused (None: they pass); `asked`: the call as the client named it."""
        if self.guard is None:
            return None
        shown = target("tools/call", asked.get("params")) if asked is not None else None
        return self.guard.check_arguments(msg.get("params"), session.principal, session.id, shown and shown[1])

    def listing(self, msg: Message, *, paged: bool) -> None:
        """A `tools/list` answer on its way to a client: filtered, compared with the pins, learnt by the guard."""
        result = msg.get("result")
        if not isinstance(result, dict):
            return
        tools = result.get("tools")
        if self.tool_filter is not None and isinstance(tools, list):
            result["tools"] = [
                tool
                for tool in tools
                if isinstance(tool, dict) and tool_allowed(self.tool_filter, tool.get("name", ""))
            ]
        if self.pins is not None:
            self.pins.screen(result, full=not paged and not result.get("nextCursor"))
        if self.guard is not None:
            self.guard.learn(result)

    def result(self, msg: Message, tool: str, session: Session) -> None:
        """A `tools/call` answer on its way to a client: redacted and scanned as the guard says."""
        if self.guard is not None:
            self.guard.check_result(msg, tool, session.principal, session.id)
