"""Client authentication for one MCP: static bearer tokens, compared as SHA-256 digests.

Tokens are never kept in clear: each configured token is hashed once at start, and a
presented credential is hashed and compared against every digest with
`hmac.compare_digest`, so timing reveals neither which token nor how much of it matched.
The credential comes only from the configured header (never the query string) and is
removed from the scope before anything downstream can forward or log it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from mcp_bastion.server.http import json_error
from mcp_bastion.types import ASGIApp, Receive, Scope, Send

__all__ = ["PRINCIPAL_KEY", "StaticToken", "TokenAuth", "check_bearer", "digest"]

#: Where an authenticated principal is left in the ASGI scope for later layers.
PRINCIPAL_KEY: Final = "mcp_bastion.principal"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class StaticToken:
    id: str
    sha256: bytes
    expires_at: datetime | None = None


def check_bearer(value: str | None, prefix: str, tokens: Iterable[StaticToken], now: datetime) -> str | StaticToken:
    """The matching token, or a short reason why the credential is refused."""
    if value is None or not value.strip():
        return "missing credentials"
    if not value.isascii():
        return "malformed credentials"
    if prefix:
        scheme, _, credential = value.partition(" ")
        if scheme.lower() != prefix.lower() or not credential.strip():
            return "malformed credentials"
    else:
        credential = value
    presented = digest(credential.strip())
    found: StaticToken | None = None
    for token in tokens:
        if hmac.compare_digest(presented, token.sha256):
            found = token
    if found is None:
        return "invalid token"
    if found.expires_at is not None and found.expires_at <= now:
        return "token expired"
    return found


class TokenAuth:
    """Admits requests that carry one of the MCP's tokens; 401 with a JSON reason otherwise."""

    def __init__(self, app: ASGIApp, *, tokens: Iterable[StaticToken], header: str, prefix: str, realm: str) -> None:
        self.app = app
        self.tokens = tuple(tokens)
        self.header = header.lower().encode("latin-1")
        self.prefix = prefix
        self.challenge = f'Bearer realm="{realm}", error="invalid_token"'.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: bytes | None = None
        kept = []
        for key, value in scope["headers"]:
            if key == self.header:
                raw = value if raw is None else raw
            else:
                kept.append((key, value))
        verdict = check_bearer(
            raw.decode("latin-1") if raw is not None else None, self.prefix, self.tokens, datetime.now(UTC)
        )
        if isinstance(verdict, str):
            await json_error(send, 401, "invalid_token", verdict, [(b"www-authenticate", self.challenge)])
            return
        scope = dict(scope)
        scope["headers"] = kept
        scope[PRINCIPAL_KEY] = verdict.id
        await self.app(scope, receive, send)
