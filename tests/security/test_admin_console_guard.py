"""The admin guard with the console on and off, in process: who reaches what with a cookie, a token or nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mcp_barbican.asgi import PRINCIPAL_KEY
from mcp_barbican.config import AdminConfig
from mcp_barbican.security.admin import AdminGuard, ConsoleLogins, admin_tokens
from mcp_barbican.security.console import CONSOLE_SESSION_KEY, Revocations, sign_session, verify_session
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import IpVerdict
from mcp_barbican.types import Receive, Scope, Send
from tests.security.asgi import call, make_scope

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "guard-admin-token-0123456789"
ALLOWED = IpVerdict(True, "allowed")
BANNED = IpVerdict(False, "banned", "r1", time.time() + 60)


class Seen:
    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def guard(app: Seen, *, console: bool = True, verdict: IpVerdict = ALLOWED, **extra: Any) -> AdminGuard:
    tokens = admin_tokens(AdminConfig.model_validate({"token": ADMIN_TOKEN}))
    logins = ConsoleLogins(3600, Revocations()) if console else None
    return AdminGuard(
        app, tokens=tokens, address_verdict=lambda ip: verdict, counters=SecurityCounters(), console=logins, **extra
    )


def cookie_for(admin_guard: AdminGuard) -> str:
    return sign_session(admin_guard.session_keys[0], 0, int(time.time()) + 600)


def csrf_for(admin_guard: AdminGuard, value: str) -> str:
    session = verify_session(admin_guard.session_keys, value, time.time())
    assert session is not None
    return session.csrf


@pytest.mark.parametrize(
    ("method", "path", "credential", "console", "status", "reached"),
    [
        ("GET", "/admin/ui", "none", True, 200, True),  # the console's login page, without a principal
        ("GET", "/admin/ui/anything", "none", True, 200, True),
        ("GET", "/admin/mcps", "none", True, 401, False),
        ("GET", "/admin/ui", "none", False, 401, False),  # console off: /admin/ui is an admin route like any
        ("GET", "/admin/mcps", "cookie", True, 200, True),
        ("GET", "/admin/mcps", "cookie", False, 401, False),  # console off: the cookie opens nothing
        ("POST", "/admin/tokens", "cookie", True, 403, False),  # no CSRF token
        ("POST", "/admin/tokens", "cookie+csrf", True, 200, True),
        ("DELETE", "/admin/tokens/x", "cookie+csrf", True, 200, True),
        ("POST", "/admin/tokens", "token", True, 200, True),  # the API's token needs no CSRF token
        ("POST", "/admin/tokens", "token+bad-cookie", True, 200, True),  # the Authorization header wins
        ("GET", "/admin/mcps", "bad-cookie", True, 401, False),
    ],
)
async def test_who_reaches_the_admin_app(
    method: str, path: str, credential: str, console: bool, status: int, reached: bool
) -> None:
    app = Seen()
    admin_guard = guard(app, console=console)
    headers: list[tuple[str, str]] = []
    value = cookie_for(admin_guard)
    if "bad-cookie" in credential:
        headers.append(("cookie", f"barbican_console={value[:-2]}AA"))
    elif "cookie" in credential:
        headers.append(("cookie", f"barbican_console={value}"))
    if "csrf" in credential:
        headers.append(("x-csrf-token", csrf_for(admin_guard, value)))
    if "token" in credential.split("+")[0]:
        headers.append(("authorization", f"Bearer {ADMIN_TOKEN}"))
    sent = await call(admin_guard, make_scope(method, path, headers))
    assert sent.status == status
    assert bool(app.scopes) is reached
    if reached and "cookie" in credential and "token" not in credential:
        assert app.scopes[0][PRINCIPAL_KEY].id == "admin:0"
        assert app.scopes[0][CONSOLE_SESSION_KEY].admin == 0


async def test_a_login_form_with_the_admin_token_sets_the_cookie_and_a_wrong_one_is_counted() -> None:
    app = Seen()
    failures: list[str | None] = []
    admin_guard = guard(app, on_failure=failures.append)
    form = f"token={ADMIN_TOKEN}".encode()
    sent = await call(admin_guard, make_scope("POST", "/admin/ui/login", [("host", "127.0.0.1:6001")]), form)
    assert sent.status == 303 and sent.headers["location"] == "/admin/ui"
    value = sent.headers["set-cookie"].partition(";")[0].partition("=")[2]
    assert verify_session(admin_guard.session_keys, value, time.time()) is not None
    assert not app.scopes  # a login reaches no admin route
    sent = await call(admin_guard, make_scope("POST", "/admin/ui/login"), b"token=wrong")
    assert (sent.status, sent.headers["location"]) == (303, "/admin/ui/login?failed=token")
    assert "set-cookie" not in sent.headers
    assert admin_guard.counters.authentication_failures == 1
    assert len(failures) == 1  # counted toward a ban like the API's
    origin = [("host", "127.0.0.1:6001"), ("origin", "http://evil.example")]
    assert (await call(admin_guard, make_scope("POST", "/admin/ui/login", origin), form)).status == 403


async def test_a_banned_address_logs_in_with_the_admin_token_as_the_api_lets_it_through() -> None:
    app = Seen()
    admin_guard = guard(app, verdict=BANNED)
    sent = await call(admin_guard, make_scope("POST", "/admin/ui/login"), f"token={ADMIN_TOKEN}".encode())
    assert sent.status == 303 and "set-cookie" in sent.headers
    sent = await call(admin_guard, make_scope("POST", "/admin/ui/login"), b"token=wrong")
    assert sent.headers["location"] == "/admin/ui/login?failed=address"
    refused = guard(Seen(), verdict=IpVerdict(False, "not_whitelisted"))
    sent = await call(refused, make_scope("POST", "/admin/ui/login"), f"token={ADMIN_TOKEN}".encode())
    assert sent.headers["location"] == "/admin/ui/login?failed=address"


async def test_the_cookie_is_secure_over_tls_or_behind_an_https_public_url() -> None:
    form = f"token={ADMIN_TOKEN}".encode()
    plain = await call(guard(Seen()), make_scope("POST", "/admin/ui/login"), form)
    assert "Secure" not in plain.headers["set-cookie"]
    tls = await call(guard(Seen()), make_scope("POST", "/admin/ui/login", scheme="https"), form)
    assert "; Secure" in tls.headers["set-cookie"]
    tokens = admin_tokens(AdminConfig.model_validate({"token": ADMIN_TOKEN}))
    behind = AdminGuard(
        Seen(),
        tokens=tokens,
        address_verdict=lambda ip: ALLOWED,
        counters=SecurityCounters(),
        console=ConsoleLogins(3600, Revocations(), secure=True),
    )
    assert "; Secure" in (await call(behind, make_scope("POST", "/admin/ui/login"), form)).headers["set-cookie"]
