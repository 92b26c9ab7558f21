"""The admin plane's own guard: admin tokens and the admin address list, nothing shared with clients.

A client token never opens `/admin/*` and an admin token is never a client credential:
the two token sets are separate (the config refuses a token that is both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp_barbican.security.auth import Authenticate, StaticToken, StaticTokens, digest
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.principal import CLIENT_IP_KEY
from mcp_barbican.server.http import json_error
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import AdminConfig

__all__ = ["AdminGuard", "admin_tokens"]

ADMIN_REALM = "mcp-barbican-admin"


def admin_tokens(admin: AdminConfig) -> StaticTokens:
    secrets = ([admin.token] if admin.token is not None else []) + list(admin.tokens)
    # Principals admin:0 (server.admin.token), admin:1 ... in order: never a client's token:{id}.
    tokens = (StaticToken(str(i), digest(s.get_secret_value())) for i, s in enumerate(secrets))
    return StaticTokens(tokens, kind="admin")


class AdminGuard:
    """403 from an address off the admin list, 401 without an admin token; else the admin app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: StaticTokens,
        address_allowed: Callable[[str | None], bool],
        counters: SecurityCounters,
        audit: AuditTrail | None = None,
    ) -> None:
        self.tokens = tokens
        self.address_allowed = address_allowed
        self.counters = counters
        self.authenticated = Authenticate(
            app,
            authenticator=tokens,
            header="Authorization",
            prefix="Bearer",
            mcp_id=ADMIN_REALM,
            counters=counters,
            challenge=lambda failure, scope: f'Bearer realm="{ADMIN_REALM}", error="{failure.error}"',
            audit=audit,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.address_allowed(scope.get(CLIENT_IP_KEY)):
            self.counters.ip_blocked += 1
            self.counters.violation()
            await json_error(send, 403, "ip_blocked", "this address may not use the admin API")
            return
        if not self.tokens.tokens:
            await json_error(send, 404, "admin_disabled", "the admin API is off: set server.admin.token")
            return
        await self.authenticated(scope, receive, send)
