"""The admin plane's own guard: admin tokens and the admin address list, nothing shared with clients.

A client token never opens `/admin/*` and an admin token is never a client credential:
the two token sets are separate (the config refuses a token that is both).

An automatic ban does not stop a valid admin credential here (and only here), so an operator
locked out by their own typos can still lift the ban; the admin address list and the deny
rules an operator added still apply to everyone. Wrong admin tokens count toward the ban.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp_barbican.asgi import CLIENT_IP_KEY, get_header, json_error
from mcp_barbican.security.auth import Authenticate, StaticToken, StaticTokens, bearer_credential, digest
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import IpVerdict, refuse
from mcp_barbican.security.principal import Principal
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
    """403 from an address off the admin list or banned, 401 without an admin token; else the admin app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: StaticTokens,
        address_verdict: Callable[[str | None], IpVerdict],
        counters: SecurityCounters,
        audit: AuditTrail | None = None,
        on_failure: Callable[[str | None], None] | None = None,
    ) -> None:
        self.tokens = tokens
        self.address_verdict = address_verdict
        self.counters = counters
        self.audit = audit
        self.authenticated = Authenticate(
            app,
            authenticator=tokens,
            header="Authorization",
            prefix="Bearer",
            mcp_id=ADMIN_REALM,
            counters=counters,
            challenge=lambda failure, scope: f'Bearer realm="{ADMIN_REALM}", error="{failure.error}"',
            on_failure=on_failure,
            audit=audit,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        verdict = self.address_verdict(scope.get(CLIENT_IP_KEY))
        if not verdict.allowed and not (verdict.reason == "banned" and self._holds_admin_token(scope)):
            await refuse(
                scope,
                send,
                verdict,
                counters=self.counters,
                audit=self.audit,
                now=time.time(),
                message="this address may not use the admin API",
            )
            return
        if not self.tokens.tokens:
            await json_error(send, 404, "admin_disabled", "the admin API is off: set server.admin.token")
            return
        await self.authenticated(scope, receive, send)

    def _holds_admin_token(self, scope: Scope) -> bool:
        raw = get_header(scope, b"authorization")
        credential = bearer_credential(raw.decode("latin-1") if raw is not None else None, "Bearer")
        return isinstance(credential, str) and isinstance(self.tokens.verify(credential)[0], Principal)
