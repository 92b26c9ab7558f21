"""Audit events: the seed's fields, ours beside them, and how tool arguments are kept."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from mcp_barbican.asgi import CLIENT_IP_KEY

__all__ = ["EVENT_TYPES", "AuditEvent", "EventType", "arguments_for_audit", "request_fields", "rfc3339"]

EventType = Literal[
    "authentication",
    "authorization",
    "rate_limit",
    "ip_block",
    "ban",
    "tool_call",
    "admin",
    "token",
    "config_reload",
    "egress",
    "integrity",
    "upstream",
]
EVENT_TYPES: Final[tuple[str, ...]] = EventType.__args__  # type: ignore[attr-defined]


@dataclass(slots=True)
class AuditEvent:
    """One thing worth an audit line. `user` is a principal id, never a credential.

    Not frozen: a frozen dataclass sets each of its 17 fields through object.__setattr__,
    which doubled the cost of the event that every authenticated request makes.
    """

    type: EventType
    action: str
    success: bool
    resource: str = ""
    user: str | None = None
    error: str | None = None
    remote_addr: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    session_id: str | None = None
    mcp: str | None = None
    tool: str | None = None
    latency_ms: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    source: str = "mcp-barbican"
    timestamp: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape every sink writes (timestamps in RFC 3339, UTC)."""
        return {
            "timestamp": rfc3339(self.timestamp),
            "type": self.type,
            "source": self.source,
            "user": self.user,
            "action": self.action,
            "resource": self.resource,
            "success": self.success,
            "error": self.error,
            "remote_addr": self.remote_addr,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "session_id": self.session_id,
            "mcp": self.mcp,
            "tool": self.tool,
            "latency_ms": self.latency_ms,
            "details": dict(self.details),
        }


_second: list[Any] = [None, ""]


def rfc3339(timestamp: float) -> str:
    """UTC with microseconds and `Z`; the date part is formatted once per second."""
    whole = int(timestamp)
    if _second[0] != whole:
        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((timestamp - whole) * 1_000_000):06d}Z"


_FIELDS_KEY: Final = "mcp_barbican.audit_fields"


def request_fields(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    """Who sent a request and what it carried, for an event: never its credential.

    Kept in the scope: one request may make several events (its authentication, its tool call).
    """
    cached: dict[str, Any] | None = scope.get(_FIELDS_KEY)
    if cached is not None:
        return cached
    fields: dict[str, Any] = {"remote_addr": scope.get(CLIENT_IP_KEY)}
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":
            fields["user_agent"] = value.decode("latin-1")[:256]
        elif name == b"x-request-id":
            fields["request_id"] = value.decode("latin-1")[:128]
        elif name == b"mcp-session-id":
            fields["session_id"] = value.decode("latin-1")[:128]
    scope[_FIELDS_KEY] = fields
    return fields


def arguments_for_audit(arguments: Any, mode: str) -> Any:
    """Tool arguments as the audit config wants them: `redact` keeps the names, `hash` a SHA-256."""
    if mode == "keep":
        return arguments
    if mode == "hash":
        canonical = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
        return {"sha256": hashlib.sha256(canonical).hexdigest()}
    if isinstance(arguments, dict):
        return dict.fromkeys(arguments, "[redacted]")
    return "[redacted]"
