"""Input limits beyond body size: header bytes, JSON nesting depth, string lengths.

Each check is a pure function returning None (fine) or a reason; the endpoint answers a
reason with a clear JSON error before anything reaches the upstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["header_bytes", "json_violation"]


def header_bytes(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a request's headers as sent (name, colon and space, value, CRLF)."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


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
