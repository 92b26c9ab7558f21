"""Input limits beyond body size: header bytes, JSON nesting depth, string lengths.

Each check is a pure function returning None (fine) or a reason. The pipeline's InputLimits
layer refuses heads over the header limit; the endpoint, which reads and parses the body,
answers a body or JSON violation with a clear JSON-RPC error before anything reaches the
upstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import rpc_error
from mcp_barbican.security.pipeline import Head, Policy

if TYPE_CHECKING:
    from mcp_barbican.config import LimitsConfig
    from mcp_barbican.security.counters import SecurityCounters
    from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["InputLimits", "header_bytes", "json_violation"]


class InputLimits(Policy):
    """431 for request headers over `max_header_size` (counted as they reach the upstream: no credential)."""

    slot = "input_limits"

    def __init__(self, app: ASGIApp, *, limits: LimitsConfig, counters: SecurityCounters) -> None:
        self.app = app
        self.max_header_size = limits.max_header_size
        self.counters = counters

    def fast(self, scope: Scope, head: Head) -> bool:
        return header_bytes(head.kept) <= self.max_header_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or header_bytes(scope["headers"]) <= self.max_header_size:
            await self.app(scope, receive, send)
            return
        self.counters.requests_rejected_limits += 1
        reason = f"request headers are over the limit of {self.max_header_size} bytes"
        await rpc_error(send, 431, jsonrpc.INVALID_REQUEST, reason)


def header_bytes(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a request's headers as sent (name, colon and space, value, CRLF)."""
    total = 0
    count = 0
    for name, value in headers:  # a plain loop: twice as fast as sum() over a generator, on every request
        total += len(name) + len(value)
        count += 1
    return total + 4 * count


def json_violation(value: Any, *, max_depth: int, max_string: int | None) -> str | None:
    """Why a parsed JSON value is over the limits, or None. Iterative: no recursion limit to hit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                return f"JSON nesting is deeper than {max_depth} levels"
            for key, child in item.items():
                if max_string is not None and len(key) > max_string:
                    return f"a JSON key is longer than {max_string} characters"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                return f"JSON nesting is deeper than {max_depth} levels"
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and max_string is not None and len(item) > max_string:
            return f"a JSON string is longer than {max_string} characters"
    return None
