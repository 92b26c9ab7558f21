"""Downstream sessions: what the proxy knows of one client's MCP session.

A session belongs to one MCP and one principal. It owns the event streams its responses
travel on and the id maps needed to translate between the client and the upstream link
that serves it (its own link in `isolated` mode, a shared one in `shared` mode).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from mcp_barbican.jsonrpc import RequestId
from mcp_barbican.logs import Fields
from mcp_barbican.server.streams import EventStream

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mcp_barbican.server.link import Link, Pending
    from mcp_barbican.server.quota import SessionQuota
    from mcp_barbican.upstream.base import IdentityHeaders

__all__ = ["MAX_KEPT_STREAMS", "Session", "expired", "new_session_id", "session_tag", "sweep_interval"]

#: Session start and end lines, at INFO (operators route or silence them by this name).
session_logger = logging.getLogger("mcp_barbican.session")

#: Finished answer streams kept per session for clients that reconnect with Last-Event-ID.
MAX_KEPT_STREAMS = 32


def sweep_interval(idle_timeout: float) -> float:
    """How often a runtime looks for expired sessions."""
    return max(1.0, min(30.0, idle_timeout / 4))


def expired(sessions: Iterable[Session], idle_timeout: float) -> list[Session]:
    """The sessions idle for `idle_timeout` seconds with nothing in flight or open."""
    cutoff = time.monotonic() - idle_timeout
    return [session for session in sessions if session.last_seen < cutoff and not session.busy]


def session_tag(session_id: str) -> str:
    """What logs show of a session id: the id is a bearer handle, so 12 hex digits of its SHA-256."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def new_session_id() -> str:
    # 192 bits from the OS CSPRNG; URL-safe base64 is visible ASCII as the spec requires.
    return secrets.token_urlsafe(24)


class Session:
    """One downstream MCP session."""

    def __init__(
        self, mcp_id: str, principal: str | None, *, legacy_sse: bool = False, session_id: str | None = None
    ) -> None:
        self.id = session_id or new_session_id()
        self.mcp_id = mcp_id
        self.principal = principal
        #: What this session's upstream requests carry of its principal (upstream_auth; None: nothing).
        self.identity: IdentityHeaders | None = None
        self.link: Link | None = None
        self.created = self.last_seen = time.monotonic()
        self.closed = False
        #: Whether its start was logged (then its end is): sessions a client got, not internal or failed ones.
        self.announced = False
        #: What the session counts against in the per-principal quota (None: not counted).
        self.holder: str | None = None
        self.initialized = False
        #: Whether its id is sealed so any replica can continue it: ending it here leaves the upstream session be.
        self.resumable = False
        self.protocol_version: str | None = None
        self.capabilities: dict[str, Any] = {}
        self.log_level: str | None = None
        self.subscriptions: set[str] = set()
        #: client request id -> pending request on the link
        self.inflight: dict[RequestId, Pending] = {}
        #: id the client sees for a server-to-client request -> the upstream's id
        self.server_requests: dict[int, RequestId] = {}
        self._next_server_request = 0
        self._next_stream = 0
        self.streams: dict[str, EventStream] = {}
        #: Legacy HTTP+SSE sessions carry every message on their one SSE connection.
        self.legacy_stream: EventStream | None = self._new_stream(persistent=True) if legacy_sse else None
        #: The standalone GET stream; messages wait here until the client opens it.
        self.get_stream = self.legacy_stream or self._new_stream(persistent=True)

    @property
    def started(self) -> bool:
        """Whether an upstream relay serves the session (its initialize was taken)."""
        return self.link is not None

    @property
    def established(self) -> bool:
        """Whether the upstream answered the session's initialize."""
        return self.link is not None and self.link.init_result is not None

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    @property
    def busy(self) -> bool:
        """A request in flight or a stream a client reads: never expired, never reclaimed."""
        return bool(self.inflight) or any(s.attached for s in self.streams.values())

    def announce(self, *, resumed: bool = False, client: str | None = None) -> None:
        """Log the session's start (its end is logged too, with its reason and duration)."""
        self.announced = True
        fields: dict[str, object] = {"mcp": self.mcp_id, "session": session_tag(self.id), "principal": self.principal}
        fields |= {"client": client, "resumed": True if resumed else None}
        session_logger.info(Fields("session started", fields))

    def end(self, table: dict[str, Any], quota: SessionQuota, reason: str = "closed") -> bool:
        """End the session in its runtime's `table` (its quota slot freed, its streams ended); False if it had ended.

        `reason`: why, for the log (delete, idle, shutdown, reclaimed, stream closed, closed).
        """
        if self.closed:
            return False
        self.closed = True
        table.pop(self.id, None)
        if self.holder is not None:
            quota.release(self.holder, self.id)
        self.end_streams()
        if self.announced:
            fields: dict[str, object] = {"mcp": self.mcp_id, "session": session_tag(self.id)}
            fields["principal"] = self.principal
            fields |= {"reason": reason, "duration_s": round(time.monotonic() - self.created, 3)}
            session_logger.info(Fields("session ended", fields))
        return True

    def reclaimable(self, settle: float) -> bool:
        """Idle (no request in flight, no stream a client reads); initialized, or uninitialized for `settle` s."""
        if self.busy:
            return False
        return self.initialized or time.monotonic() - self.created > settle

    def _new_stream(self, *, persistent: bool = False) -> EventStream:
        stream = EventStream(f"{self._next_stream}", persistent=persistent)
        self._next_stream += 1
        self.streams[stream.stream_id] = stream
        return stream

    def open_stream(self) -> EventStream:
        """A stream for the answer to one request (the legacy SSE stream for legacy sessions)."""
        if self.legacy_stream is not None:
            return self.legacy_stream
        if len(self.streams) > MAX_KEPT_STREAMS:
            self._forget_finished_streams()
        return self._new_stream()

    def _forget_finished_streams(self) -> None:
        finished = [sid for sid, s in self.streams.items() if s.done and not s.attached and s is not self.get_stream]
        for sid in finished[: len(finished) - MAX_KEPT_STREAMS // 2]:
            del self.streams[sid]

    def next_server_request_id(self) -> int:
        self._next_server_request += 1
        return self._next_server_request

    def fallback_stream(self) -> EventStream:
        """Where a message unrelated to a known request goes: the oldest open answer stream, else GET."""
        for pending in self.inflight.values():
            if pending.stream is not self.legacy_stream and not pending.stream.done:
                return pending.stream
        return self.get_stream

    def declared(self, capability: str) -> bool:
        return capability in self.capabilities

    def end_streams(self) -> None:
        for stream in self.streams.values():
            stream.close()
