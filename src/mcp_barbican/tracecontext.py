"""W3C Trace Context (`traceparent`, `tracestate`): parsing, formatting, and what goes upstream.

Pure and dependency-free: the tracing layer (server/tracing.py, with OpenTelemetry) reads a
client's `traceparent` with `parse_traceparent` and, while a request or tool call is relayed,
sets `OUTGOING` to the headers an HTTP upstream must get; the upstream clients read `OUTGOING`
when they build a request. With telemetry off nothing sets it, so nothing is sent.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Final, NamedTuple

__all__ = ["MAX_TRACESTATE", "OUTGOING", "TraceParent", "clean_tracestate", "format_traceparent", "parse_traceparent"]

# version 00 is exactly this; a later version may append fields after the flags ("-..."), which we ignore.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
#: Longest `tracestate` passed on (the spec lets a vendor truncate; 512 is its suggested minimum to keep).
MAX_TRACESTATE: Final = 512

#: The (traceparent, tracestate or None) an HTTP upstream request made now must carry; None: nothing.
OUTGOING: ContextVar[tuple[str, str | None] | None] = ContextVar("mcp_barbican_outgoing_trace", default=None)


class TraceParent(NamedTuple):
    trace_id: str  # 32 lower-case hex digits, not all zero
    span_id: str  # 16 lower-case hex digits, not all zero
    flags: int  # bit 0: sampled


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The parent a client's `traceparent` names; None when absent or invalid (then a new trace starts).

    Per W3C Trace Context: lower-case hex only, version ff is invalid, version 00 has nothing
    after the flags, all-zero ids are invalid.
    """
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The version-00 `traceparent` of a span (ids as integers, as OpenTelemetry keeps them)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


def clean_tracestate(value: str | None) -> str | None:
    """A client's `tracestate` as passed on: None when empty, too long, or holding a control character."""
    if not value or len(value) > MAX_TRACESTATE or not value.isprintable():
        return None
    return value
