"""JSON-RPC 2.0 message helpers shared by every layer.

Messages travel as plain dicts (parsed with orjson); nothing here validates the MCP schema,
so upstream payloads pass through unchanged apart from the ids a proxy must rewrite.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "UPSTREAM_ERROR",
    "Message",
    "RequestId",
    "dumps",
    "error_body",
    "error_response",
    "is_notification",
    "is_request",
    "is_response",
    "loads",
]

Message = dict[str, Any]
RequestId = str | int

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Implementation-defined server error range: the upstream is down or failed the call.
UPSTREAM_ERROR: Final = -32000


#: 19+ digits in a row may be an integer beyond 64 bits, which orjson turns into a float.
_LONG_NUMBER: Final = re.compile(rb"\d{19,}")


def loads(data: bytes | str) -> Any:
    """Parse JSON; text with very long numbers goes to the stdlib, which keeps big integers exact."""
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_NUMBER.search(raw):
        return json.loads(raw)
    return orjson.loads(raw)


def dumps(obj: Any) -> bytes:
    """Serialize compactly (never with a newline: stdio framing depends on it)."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def is_request(msg: Message) -> bool:
    return "method" in msg and "id" in msg


def is_notification(msg: Message) -> bool:
    return "method" in msg and "id" not in msg


def is_response(msg: Message) -> bool:
    return "method" not in msg and ("result" in msg or "error" in msg)


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> Message:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def error_body(request_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    return dumps(error_response(request_id, code, message, data))
