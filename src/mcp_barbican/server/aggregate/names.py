"""How the aggregated endpoint names what it merges, and how it reads the names back.

Tools and prompts are `{mcp id}__{name}`: an MCP id never holds `__` nor ends in `_` (the config refuses both), so
the first `__` splits a name unambiguously. Resource URIs and URI templates become
`mcp-barbican://{mcp id}/{original}`: the original follows the prefix unchanged, so a template's
variables expand as the upstream defined them and the way back is stripping the prefix. A merged
listing's cursor is opaque to the client: the upstream cursors of the MCPs that have more pages.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Final

__all__ = [
    "SEPARATOR",
    "URI_PREFIX",
    "decode_cursor",
    "encode_cursor",
    "prefixed",
    "split_name",
    "unwrap_uri",
    "wrap_uri",
]

SEPARATOR: Final = "__"
URI_PREFIX: Final = "mcp-barbican://"
#: Longest cursor accepted back (the upstream cursors it holds are the upstreams' own size).
MAX_CURSOR: Final = 16_384


def prefixed(mcp_id: str, name: str) -> str:
    return f"{mcp_id}{SEPARATOR}{name}"


def split_name(name: object) -> tuple[str, str] | None:
    """(mcp id, the upstream's name) of a prefixed name; None for anything else."""
    if not isinstance(name, str):
        return None
    mcp_id, separator, rest = name.partition(SEPARATOR)
    if not separator or not mcp_id or not rest:
        return None
    return mcp_id, rest


def wrap_uri(mcp_id: str, uri: str) -> str:
    return f"{URI_PREFIX}{mcp_id}/{uri}"


def unwrap_uri(uri: object) -> tuple[str, str] | None:
    """(mcp id, the upstream's URI) of a wrapped URI; None for anything else."""
    if not isinstance(uri, str) or not uri.startswith(URI_PREFIX):
        return None
    mcp_id, slash, rest = uri[len(URI_PREFIX) :].partition("/")
    if not slash or not mcp_id or not rest:
        return None
    return mcp_id, rest


def encode_cursor(cursors: Mapping[str, str]) -> str | None:
    """The merged listing's next cursor (None: no MCP has another page)."""
    if not cursors:
        return None
    raw = json.dumps(dict(cursors), separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(cursor: object) -> dict[str, str] | None:
    """The upstream cursors a merged cursor holds; None when it is not one of ours."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        return None
    if not isinstance(value, dict) or not value:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return value
