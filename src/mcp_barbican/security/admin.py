"""The admin plane's own guard: admin tokens and the admin address list, nothing shared with clients.

A client token never opens `/admin/*` and an admin token is never a client credential:
the two token sets are separate (the config refuses a token that is both).

An automatic ban does not stop a valid admin credential here (and only here), so an operator
locked out by their own typos can still lift the ban; the admin address list and the deny
rules an operator added still apply to everyone. Wrong admin tokens count toward the ban.

The web console's session cookie (`security/console.py`) is an admin credential on /admin only,
checked after the same address list; every change it authenticates must carry its CSRF token.
A console login is an admin-token request like any other: the form's token is moved into the
Authorization header, so the address list, ban exemption, counting and audit are the API's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, urlsplit

from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY, BodyTooLarge, get_header, json_error, read_body, respond
from mcp_barbican.security.auth import Authenticate, StaticToken, StaticTokens, bearer_credential, digest
from mcp_barbican.security.console import (
    CONSOLE_SESSION_KEY,
    CSRF_HEADER,
    ConsoleSession,
    Revocations,
    clear_cookie,
    cookie_value,
    csrf_valid,
    session_cookie,
    sign_session,
    verify_session,
)
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import IpVerdict, refuse
from mcp_barbican.security.principal import Principal
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import AdminConfig

__all__ = ["AdminGuard", "ConsoleLogins", "admin_tokens"]

ADMIN_REALM = "mcp-barbican-admin"
CONSOLE_PREFIX: Final = "/admin/ui"
LOGIN_PATH: Final = "/admin/ui/login"
LOGOUT_PATH: Final = "/admin/ui/logout"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_LOGIN_BODY_LIMIT: Final = 4096


@dataclass(frozen=True)
class ConsoleLogins:
    """How console sessions are made (`server.admin.ui`); `revoked` outlives config reloads."""

    lifetime: float
    revoked: Revocations
    #: Secure cookies even on a plain listener (server.public_url is https: TLS ends in front of us).
    secure: bool = False


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
        console: ConsoleLogins | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.address_verdict = address_verdict
        self.counters = counters
        self.audit = audit
        self.console = console
        #: Console session keys, one per admin token (index as in the principal admin:{index}).
        self.session_keys = tuple(token.sha256 for token in tokens.tokens)

        def authenticate(inner: ASGIApp) -> Authenticate:
            return Authenticate(
                inner,
                authenticator=tokens,
                header="Authorization",
                prefix="Bearer",
                mcp_id=ADMIN_REALM,
                counters=counters,
                challenge=lambda failure, scope: f'Bearer realm="{ADMIN_REALM}", error="{failure.error}"',
                on_failure=on_failure,
                audit=audit,
            )

        self.authenticated = authenticate(app)
        self.login_authenticated = authenticate(self._open_session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.console is not None and scope["path"] == LOGIN_PATH and scope["method"] == "POST":
            await self._login(scope, receive, send)
            return
        await self._guard(scope, receive, send, self.authenticated)

    async def _guard(self, scope: Scope, receive: Receive, send: Send, authenticated: ASGIApp) -> None:
        session = self._session(scope)
        verdict = self.address_verdict(scope.get(CLIENT_IP_KEY))
        if not verdict.allowed and not (
            verdict.reason == "banned" and (session is not None or self._holds_admin_token(scope))
        ):
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
        if session is not None:
            await self._with_session(scope, receive, send, session)
        elif self.console is not None and _in_console(scope["path"]) and get_header(scope, b"authorization") is None:
            await self.app(scope, receive, send)  # no principal: the console serves its login page only
        else:
            await authenticated(scope, receive, send)

    def _session(self, scope: Scope) -> ConsoleSession | None:
        """The console session of a request without an Authorization header (that wins when both are sent)."""
        if self.console is None or get_header(scope, b"authorization") is not None:
            return None
        value = cookie_value(get_header(scope, b"cookie"))
        session = None if value is None else verify_session(self.session_keys, value, time.time())
        return None if session is None or session in self.console.revoked else session

    async def _with_session(self, scope: Scope, receive: Receive, send: Send, session: ConsoleSession) -> None:
        assert self.console is not None
        if scope["method"] not in _SAFE_METHODS and not csrf_valid(session, get_header(scope, CSRF_HEADER)):
            self.counters.violation()
            await json_error(send, 403, "csrf_failed", "a change made with the console session needs its X-CSRF-Token")
            return
        if scope["path"] == LOGOUT_PATH and scope["method"] == "POST":
            self.console.revoked.revoke(session)
            await respond(send, 204, headers=[(b"set-cookie", clear_cookie(secure=self._secure(scope)))])
            return
        scope[PRINCIPAL_KEY] = Principal(id=f"admin:{session.admin}", kind="admin")
        scope[CONSOLE_SESSION_KEY] = session
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The login form: its token goes through the guard as a Bearer credential; any refusal shows the form."""
        origin = get_header(scope, b"origin")
        if origin is not None and urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") != get_header(
            scope, b"host"
        ):
            await json_error(send, 403, "cross_origin", "the console's login form is posted from its own origin")
            return
        try:
            form = parse_qs((await read_body(scope, receive, _LOGIN_BODY_LIMIT)).decode("utf-8", "replace"))
        except BodyTooLarge:
            await json_error(send, 413, "body_too_large", f"the login form is limited to {_LOGIN_BODY_LIMIT} bytes")
            return
        token = (form.get("token") or [""])[0].strip()
        headers = [h for h in scope["headers"] if h[0] not in (b"authorization", b"cookie")]
        headers.append((b"authorization", f"Bearer {token}".encode()))
        await self._guard({**scope, "headers": headers}, receive, _refusals_to_form(send), self.login_authenticated)

    async def _open_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.console is not None
        admin = int(scope[PRINCIPAL_KEY].id.partition(":")[2])
        lifetime = int(self.console.lifetime)
        value = sign_session(self.session_keys[admin], admin, int(time.time()) + lifetime)
        cookie = session_cookie(value, lifetime, secure=self._secure(scope))
        await respond(send, 303, headers=[(b"location", CONSOLE_PREFIX.encode()), (b"set-cookie", cookie)])

    def _secure(self, scope: Scope) -> bool:
        return scope.get("scheme") == "https" or (self.console is not None and self.console.secure)

    def _holds_admin_token(self, scope: Scope) -> bool:
        raw = get_header(scope, b"authorization")
        credential = bearer_credential(raw.decode("latin-1") if raw is not None else None, "Bearer")
        return isinstance(credential, str) and isinstance(self.tokens.verify(credential)[0], Principal)


def _in_console(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def _refusals_to_form(send: Send) -> Send:
    """A refused login answers with the form again (a redirect naming why), not the API's JSON."""
    refused = False

    async def relay(message: Message) -> None:
        nonlocal refused
        if message["type"] == "http.response.start" and message["status"] >= 400:
            refused = True
            why = {401: "token", 403: "address"}.get(message["status"], "error")
            location = f"{LOGIN_PATH}?failed={why}".encode()
            head = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 303, "headers": head})
            await send({"type": "http.response.body", "body": b""})
        elif not refused:
            await send(message)

    return relay
