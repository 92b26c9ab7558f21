"""The audit trail: events, the pipeline that writes them, and the sinks."""

from mcp_barbican.audit.events import EVENT_TYPES, AuditEvent, arguments_for_audit, request_fields
from mcp_barbican.audit.feed import EventFeed, Subscription, is_security_event
from mcp_barbican.audit.trail import AuditTrail, build_sinks

__all__ = [
    "EVENT_TYPES",
    "AuditEvent",
    "AuditTrail",
    "EventFeed",
    "Subscription",
    "arguments_for_audit",
    "build_sinks",
    "is_security_event",
    "request_fields",
]
