"""Sessions per principal, counted across every MCP of the listener (`server.limits`).

One principal may hold at most `max_sessions_per_principal` downstream sessions (Streamable
HTTP sessions and legacy SSE streams alike) over all MCPs at once, so no caller can take every
`max_sessions` slot of an MCP, nor spread over several MCPs to hold more. At the cap, the
principal's own least recently used idle session (no request in flight, no stream open, and
initialized or left uninitialized past `init_timeout`) is closed to make room, as a client
that never sends DELETE would otherwise lock itself out until its sessions expire; only when
every one of them is busy is the new one refused. Callers of an MCP without authentication are
counted per client address (per /64 for IPv6, where one host owns the whole prefix). A legacy
SSE stream that has not sent `initialize` within `init_timeout` is closed, which frees its slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from mcp_barbican.security.addresses import address_key

if TYPE_CHECKING:
    from mcp_barbican.config import ListenerLimits

__all__ = ["Held", "SessionQuota", "TooManySessions", "holder_key"]

#: IPv6 callers without a principal count per this prefix (one host's share).
IPV6_PREFIX: Final = 64


class TooManySessions(Exception):
    """The caller holds as many busy sessions as `server.limits.max_sessions_per_principal` allows."""


class Held(Protocol):
    """What the quota needs of a session."""

    @property
    def id(self) -> str: ...

    @property
    def last_seen(self) -> float: ...

    def reclaimable(self, settle: float) -> bool: ...


Reclaim = Callable[[Held], None]


def holder_key(principal: str | None, client_ip: str | None) -> str:
    """What a session counts against: its principal, else the caller's address (`ip:...`)."""
    if principal is not None:
        return principal
    key = address_key(client_ip, IPV6_PREFIX) if client_ip is not None else None
    return f"ip:{key or 'unknown'}"


class SessionQuota:
    """Open sessions per holder; only holders with a session are kept, so the table is bounded by them."""

    def __init__(self, limits: ListenerLimits) -> None:
        #: holder -> session id -> (the session, how to close it: synchronously frees its slot)
        self.held: dict[str, dict[str, tuple[Held, Reclaim]]] = {}
        self.configure(limits)

    def configure(self, limits: ListenerLimits) -> None:
        """Take new limits (a reload): sessions open now stay, new ones count against the new cap."""
        self.cap = limits.max_sessions_per_principal
        self.init_timeout = limits.init_timeout

    def take(self, holder: str, session: Held, reclaim: Reclaim) -> bool:
        """Count `session` for `holder`, first closing its oldest idle session at the cap; False when all are busy."""
        sessions = self.held.get(holder, {})
        while len(sessions) >= self.cap:
            idle = [entry for entry in sessions.values() if entry[0].reclaimable(self.init_timeout)]
            if not idle:
                return False
            victim, close = min(idle, key=lambda entry: entry[0].last_seen)
            close(victim)
            sessions.pop(victim.id, None)  # released by the close already; never counted twice
        self.held.setdefault(holder, sessions)[session.id] = (session, reclaim)
        return True

    def hold(self, session: Held, principal: str | None, client_ip: str | None, reclaim: Reclaim) -> str:
        """Count a new session for its caller (see `take`); what it counts against. TooManySessions at the cap."""
        holder = holder_key(principal, client_ip)
        if not self.take(holder, session, reclaim):
            who = "this address" if principal is None else f"principal {principal!r}"
            raise TooManySessions(
                f"{who} already holds {self.cap} sessions, each with a request or stream open "
                "(server.limits.max_sessions_per_principal): end one (DELETE) before opening another"
            )
        return holder

    def rename(self, holder: str, old: str, new: str) -> None:
        """A counted session took a new id (sealed once its upstream session was known)."""
        sessions = self.held.get(holder)
        if sessions is not None and old in sessions:
            sessions[new] = sessions.pop(old)

    def release(self, holder: str, session_id: str) -> None:
        sessions = self.held.get(holder)
        if sessions is not None:
            sessions.pop(session_id, None)
            if not sessions:
                del self.held[holder]
