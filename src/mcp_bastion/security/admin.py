"""The admin plane's own guard: admin tokens and the admin address list, nothing shared with clients.

A client token never opens `/admin/*` and an admin token is never a client credential:
the two token sets are separate (the config refuses a token that is both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp_bastion.security.auth import AuthFailure, StaticToken, StaticTokens, bearer_credential, digest
from mcp_bastion.security.counters import SecurityCounters
from mcp_bastion.security.principal import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_bastion.server.http import get_header, json_error
from mcp_bastion.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_bastion.config import AdminConfig

__all__ = ["AdminGuard", "admin_tokens"]

_CHALLENGE = [(b"www-authenticate", b'Bearer realm="mcp-bastion-admin", error="invalid_token"')]


def admin_tokens(admin: AdminConfig) -> StaticTokens:
    secrets = ([admin.token] if admin.token is not None else []) + list(admin.tokens)
    return StaticTokens(StaticToken(f"admin-{i}", digest(s.get_secret_value())) for i, s in enumerate(secrets))


class AdminGuard:
    """403 from an address off the admin list, 401 without an admin token; else the admin app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: StaticTokens,
        address_allowed: Callable[[str | None], bool],
        counters: SecurityCounters,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.address_allowed = address_allowed
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.address_allowed(scope.get(CLIENT_IP_KEY)):
            self.counters.ip_blocked += 1
            self.counters.violation()
            await json_error(send, 403, "ip_blocked", "this address may not use the admin API")
            return
        if not self.tokens.tokens:
            await json_error(send, 404, "admin_disabled", "the admin API is off: set server.admin.token")
            return
        raw = get_header(scope, b"authorization")
        credential = bearer_credential(raw.decode("latin-1") if raw is not None else None, "Bearer")
        self.counters.authentication_attempts += 1
        verdict = credential if isinstance(credential, AuthFailure) else await self.tokens.authenticate(credential)
        if isinstance(verdict, AuthFailure):
            self.counters.authentication_failures += 1
            self.counters.violation()
            await json_error(send, 401, "invalid_token", verdict.reason, list(_CHALLENGE))
            return
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
        scope[PRINCIPAL_KEY] = verdict
        await self.app(scope, receive, send)
