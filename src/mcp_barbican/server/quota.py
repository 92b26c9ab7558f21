"""Sessions per principal, counted across every MCP of the listener (`server.limits`).

One principal may hold at most `max_sessions_per_principal` downstream sessions (Streamable
HTTP sessions and legacy SSE streams alike) over all MCPs at once, so no caller can take every
`max_sessions` slot of an MCP, nor spread over several MCPs to hold more. Callers of an MCP
without authentication are counted per client address (per /64 for IPv6, where one host owns
the whole prefix). A legacy SSE stream that has not sent `initialize` within `init_timeout` is
closed, which frees its slot.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from mcp_barbican.config import ListenerLimits

__all__ = ["SessionQuota", "TooManySessions", "holder_key"]

#: IPv6 callers without a principal count per this prefix (one host's share).
IPV6_PREFIX: Final = 64


class TooManySessions(Exception):
    """The caller holds as many sessions as `server.limits.max_sessions_per_principal` allows."""


def holder_key(principal: str | None, client_ip: str | None) -> str:
    """What a session counts against: its principal, else the caller's address (`ip:...`)."""
    if principal is not None:
        return principal
    if client_ip is None:
        return "ip:unknown"
    if ":" in client_ip:  # the client-address layer shows IPv4-mapped addresses as IPv4
        with contextlib.suppress(ValueError):
            return f"ip:{ipaddress.IPv6Network((client_ip, IPV6_PREFIX), strict=False)}"
    return f"ip:{client_ip}"


class SessionQuota:
    """Open sessions per holder; only holders with a session are kept, so the table is bounded by them."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.held: dict[str, int] = {}
        self.configure(limits)

    def configure(self, limits: ListenerLimits) -> None:
        """Take new limits (a reload): sessions open now stay, new ones count against the new cap."""
        self.cap = limits.max_sessions_per_principal
        self.init_timeout = limits.init_timeout

    def take(self, holder: str) -> bool:
        """Count one more session for `holder`; False (and nothing counted) at its cap."""
        count = self.held.get(holder, 0)
        if count >= self.cap:
            return False
        self.held[holder] = count + 1
        return True

    def release(self, holder: str) -> None:
        count = self.held.get(holder, 0) - 1
        if count > 0:
            self.held[holder] = count
        else:
            self.held.pop(holder, None)
