"""What a Streamable HTTP request must look like, as pure functions of its head and message.

Protocol versions, `Accept`, JSON-RPC message shape, the stateless 2026-07-28 era's requests
and mirrored headers, and SSE event ids; the endpoint answers what they refuse.
"""

from __future__ import annotations

from typing import Final

from mcp_barbican.asgi import get_header
from mcp_barbican.jsonrpc import Message
from mcp_barbican.types import Scope

__all__ = [
    "HEADER_MISMATCH",
    "MODERN_VERSION_KEY",
    "SUPPORTED_VERSIONS",
    "accepts",
    "header_mismatch",
    "parse_event_id",
    "sessionless",
    "well_formed",
]

SUPPORTED_VERSIONS: Final = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"})
MODERN_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
#: 2026-07-28 error code for headers that contradict the body.
HEADER_MISMATCH: Final = -32020


def accepts(scope: Scope, media: bytes) -> bool:
    accept = get_header(scope, b"accept")
    if accept is None:
        return False
    return media in accept or b"*/*" in accept


def well_formed(msg: Message) -> bool:
    if "method" in msg:
        if not isinstance(msg["method"], str):
            return False
        if "id" in msg:
            return isinstance(msg["id"], (str, int)) and not isinstance(msg["id"], bool)
        return True
    return "id" in msg and ("result" in msg or "error" in msg)


def sessionless(msg: Message) -> bool:
    """A request of the stateless 2026-07-28 era: discovery, or one carrying per-request _meta."""
    if msg.get("method") == "server/discover":
        return True
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and MODERN_VERSION_KEY in meta


def header_mismatch(scope: Scope, msg: Message) -> str | None:
    """2026-07-28: mirrored headers must say what the body says (we relay what the body says)."""
    method = get_header(scope, b"mcp-method")
    if method is not None and method.decode("latin-1") != msg.get("method"):
        return "HeaderMismatch: Mcp-Method does not match the request body"
    meta = (msg.get("params") or {}).get("_meta") or {}
    version = get_header(scope, b"mcp-protocol-version")
    if version is not None and MODERN_VERSION_KEY in meta and version.decode("latin-1") != meta[MODERN_VERSION_KEY]:
        return "HeaderMismatch: MCP-Protocol-Version does not match the request body"
    return None


def parse_event_id(value: str) -> tuple[str, int] | None:
    stream_id, _, seq = value.rpartition("-")
    if not stream_id or not seq.isdigit():
        return None
    return stream_id, int(seq)
