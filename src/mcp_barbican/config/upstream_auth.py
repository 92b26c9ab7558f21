"""What the proxy presents to an HTTP upstream on a caller's behalf (`mcps[].upstream_auth`).

`static` is the MCP's `headers` alone. `identity_headers` adds headers made of the caller's
principal; `token_exchange` adds `Authorization: Bearer` with a token obtained for the caller
(RFC 8693). The client's own credential is never among them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, SecretStr, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import Duration, HttpUrl, Model, NonEmptyStr, check_header_name

__all__ = ["IDENTITY_FIELDS", "TokenExchangeConfig", "UpstreamAuthConfig"]

#: Principal fields an identity header may name; any other value is a claim path (`sub`, `org.name`).
IDENTITY_FIELDS: tuple[str, ...] = ("id", "kind", "roles", "scopes")
_CLAIM_PATH = re.compile(r"[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*")
# Hop-by-hop and framing headers, the MCP session headers, and the credential header (token_exchange's).
_NOT_IDENTITY = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "proxy-connection", "te"}
    | {"trailer", "upgrade", "mcp-session-id", "mcp-protocol-version", "authorization", "cookie"}
)


def _check_claim_path(value: str) -> str:
    if not _CLAIM_PATH.fullmatch(value):
        raise ValueError(f"{value!r} is not a principal field ({', '.join(IDENTITY_FIELDS)}) nor a dotted claim path")
    return value


def _check_identity_header(value: str) -> str:
    check_header_name(value)
    if value.lower() in _NOT_IDENTITY:
        raise ValueError(f"header {value!r} cannot carry an identity (the proxy sets it, or it is a credential)")
    return value


class TokenExchangeConfig(Model):
    """An RFC 8693 token endpoint: the caller's credential is the subject token, the answer goes upstream."""

    token_endpoint: HttpUrl
    client_id: NonEmptyStr
    client_secret: SecretStr
    audience: NonEmptyStr | None = None
    scope: NonEmptyStr | None = None
    timeout: Duration = 10.0
    #: Exchanged tokens kept at once (one per principal; the least recently used goes first).
    cache_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class UpstreamAuthConfig(Model):
    type: Literal["static", "token_exchange", "identity_headers"] = "static"
    token_exchange: TokenExchangeConfig | None = None
    identity_headers: dict[
        Annotated[str, AfterValidator(_check_identity_header)], Annotated[str, AfterValidator(_check_claim_path)]
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == "token_exchange" and self.token_exchange is None:
            raise LocatedError(("token_exchange",), "required for type token_exchange")
        if self.type != "token_exchange" and self.token_exchange is not None:
            raise LocatedError(("token_exchange",), f"not used with type {self.type}; remove it")
        if self.type == "identity_headers" and not self.identity_headers:
            raise LocatedError(("identity_headers",), "map at least one header to a principal field or claim")
        if self.type != "identity_headers" and self.identity_headers:
            raise LocatedError(("identity_headers",), f"not used with type {self.type}; remove it")
        seen: set[str] = set()
        for name in self.identity_headers:
            if name.lower() in seen:
                raise LocatedError(("identity_headers", name), "named twice (header names ignore case)")
            seen.add(name.lower())
        return self

    @property
    def per_principal(self) -> bool:
        """Whether upstream requests differ by caller (then no upstream session is shared between callers)."""
        return self.type != "static"
