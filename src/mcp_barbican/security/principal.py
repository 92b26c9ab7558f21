"""Who is calling, as the security layers hand it on through the ASGI scope."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp_barbican.asgi import PRINCIPAL_KEY

__all__ = ["Principal", "principal_id", "principal_of"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    `id` is stable per credential (a token entry's id, a JWT's `iss`+`sub`) and is what
    sessions are bound to and rate limits are keyed on; it is never the secret itself.
    `mcps` limits which MCPs the credential reaches (None: all that accept it).
    """

    id: str
    kind: str
    roles: tuple[str, ...] = ()
    mcps: tuple[str, ...] | None = None
    scopes: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def reaches(self, mcp_id: str) -> bool:
        return self.mcps is None or mcp_id in self.mcps


def principal_id(scope: Mapping[str, Any]) -> str | None:
    """The id of the request's authenticated principal, None when nobody authenticated."""
    principal = scope.get(PRINCIPAL_KEY)
    return principal.id if isinstance(principal, Principal) else None


def principal_of(scope: Mapping[str, Any]) -> Principal | None:
    """The request's authenticated principal, None when nobody authenticated."""
    principal = scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None
