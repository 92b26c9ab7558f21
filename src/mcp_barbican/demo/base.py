"""What every part of the demo server shares: JSON shapes, versions, error codes and errors."""

from __future__ import annotations

import logging
from typing import Any, Final

__all__ = [
    "CLIENT_REQUEST_TIMEOUT",
    "DEFAULT_LOG_LEVEL",
    "INSTRUCTIONS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_VERSION",
    "LOG_LEVELS",
    "MAX_LINE_BYTES",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_NAME",
    "SHUTDOWN_GRACE",
    "SUPPORTED_VERSIONS",
    "Json",
    "RequestId",
    "RpcError",
    "ToolError",
    "log",
]

Json = dict[str, Any]
RequestId = str | int

SERVER_NAME: Final = "mcp-barbican-demo"
SUPPORTED_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION: Final = SUPPORTED_VERSIONS[-1]
INSTRUCTIONS: Final = (
    "A demo server bundled with mcp-barbican: try echo, add, slow (progress and cancellation), "
    "sample and elicit (requests back to the client) and whoami (the environment it was given)."
)
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
DEFAULT_LOG_LEVEL: Final = "info"

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

# Sampling and elicitation wait on a human, so this is generous; the spec still wants a bound.
CLIENT_REQUEST_TIMEOUT: Final = 300.0
# After stdin closes, quick requests still get their answers; longer ones are cancelled.
SHUTDOWN_GRACE: Final = 0.5
MAX_LINE_BYTES: Final = 16 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024

log = logging.getLogger(SERVER_NAME)


class RpcError(Exception):
    """A JSON-RPC error response for the current request."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ToolError(Exception):
    """A tool failure reported to the model as a result with `isError: true`."""
