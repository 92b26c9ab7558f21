"""The caller's identity as upstream request headers (`upstream_auth.identity_headers`).

Each header names a principal field (`id`, `kind`, `roles`, `scopes`) or a claim by dotted
path (`sub`, `email`, `org.name`; claims come from a JWT, or `sub` and `subject` from a client
certificate). Roles and list claims are joined with `,`, scopes with a space. A value that
is missing, not a string, number, boolean or list of them, or not a safe header value
(control characters, CR/LF, non-ASCII, over 4 KiB) is left out, with the reason; the value
itself is never part of the reason, so it never reaches the log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from mcp_barbican.security.principal import Principal

__all__ = ["identity_headers", "identity_value"]

_MAX_VALUE: Final = 4096
_SAFE_VALUE = re.compile(r"[\x20-\x7e\t]*")
_Scalar = str | int | float | bool


def identity_value(principal: Principal, path: str) -> str | None:
    """The raw text of a principal field or claim, None when it has no value fit for a header."""
    if path == "id":
        return principal.id
    if path == "kind":
        return principal.kind
    if path == "roles":
        return ",".join(principal.roles)
    if path == "scopes":
        return " ".join(principal.scopes)
    value: object = principal.claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, list | tuple):
        return ",".join(_scalar(item) or "" for item in value) if all(_scalar(i) is not None for i in value) else None
    return _scalar(value)


def _scalar(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Scalar):
        return str(value)
    return None


def identity_headers(principal: Principal, mapping: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The headers for `principal`, and (header, reason) for each one left out."""
    headers: dict[str, str] = {}
    left_out: list[tuple[str, str]] = []
    for name, path in mapping.items():
        value = identity_value(principal, path)
        if value is None:
            left_out.append((name, f"{principal.kind} principal has no {path!r} that fits a header"))
            continue
        value = value.strip()
        if len(value) > _MAX_VALUE or not _SAFE_VALUE.fullmatch(value):
            left_out.append((name, f"{path!r} holds characters or a length no header value may carry"))
            continue
        headers[name] = value
    return headers, left_out
