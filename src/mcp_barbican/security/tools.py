"""Tool filters: which of an MCP's tools a client may see and call (glob patterns)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp_barbican.config import ToolFilter

__all__ = ["tool_allowed"]


def tool_allowed(tool_filter: ToolFilter | None, name: str) -> bool:
    """Whether `name` passes the filter: `allow` lists what is visible, `block` what is not."""
    if tool_filter is None:
        return True
    listed = any(fnmatchcase(name, pattern) for pattern in tool_filter.list)
    return listed if tool_filter.mode == "allow" else not listed
