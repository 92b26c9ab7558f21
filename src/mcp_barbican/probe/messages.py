"""What the probe sends: JSON-RPC messages, the bad credentials, the foreign Origin and Host."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Final

__all__ = [
    "BAD_PROTOCOL_VERSION",
    "FOREIGN_HOST",
    "FOREIGN_ORIGIN",
    "JSON_HEADERS",
    "PROTOCOL_VERSION",
    "bad_credentials",
    "initialize",
    "jwt",
    "rpc",
]

PROTOCOL_VERSION: Final = "2025-06-18"
BAD_PROTOCOL_VERSION: Final = "1999-01-01"
FOREIGN_ORIGIN: Final = "https://evil.example"
FOREIGN_HOST: Final = "evil.example"
JSON_HEADERS: Final[list[tuple[str, bytes | str]]] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
]


def rpc(method: str, request_id: int | None = 1, params: Mapping[str, object] | None = None) -> dict[str, object]:
    message: dict[str, object] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params is not None:
        message["params"] = dict(params)
    return message


def initialize() -> bytes:
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-barbican-probe", "version": "1"},
    }
    return json.dumps(rpc("initialize", 0, params)).encode()


def jwt(claims: dict[str, object], *, unsigned: bool = False) -> str:
    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "none" if unsigned else "HS256", "typ": "JWT"}
    signing = f"{encode(json.dumps(header).encode())}.{encode(json.dumps(claims).encode())}"
    if unsigned:
        return f"{signing}."
    mac = hmac.new(secrets.token_bytes(32), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{encode(mac)}"


def bad_credentials() -> dict[str, bytes]:
    """The malformed Authorization values sent (label -> raw header value)."""
    return {
        "Bearer": b"Bearer",
        "Bearer + space": b"Bearer ",
        "Basic": b"Basic " + base64.b64encode(b"admin:admin"),
        "InvalidFormat": b"InvalidFormat",
        "non-ASCII": "Bearer t\u00f6k\u00e9n-\u00ff".encode("latin-1"),
    }
