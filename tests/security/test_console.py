"""The console session: the signed cookie, its CSRF token, its Set-Cookie flags and the logout set, from tables."""

from __future__ import annotations

import time

import pytest

from mcp_barbican.admin.console import CSP
from mcp_barbican.admin.console.app import page_headers
from mcp_barbican.security.console import (
    COOKIE_NAME,
    ConsoleSession,
    Revocations,
    clear_cookie,
    cookie_value,
    csrf_token,
    csrf_valid,
    session_cookie,
    sign_session,
    verify_session,
)

KEY_0 = b"\x01" * 32
KEY_1 = b"\x02" * 32
KEYS = (KEY_0, KEY_1)
NOW = 1_800_000_000
LATER = NOW + 3600
GOOD = sign_session(KEY_0, 0, LATER, "bm9uY2U")


def _tampered_mac() -> str:
    head, _, mac = GOOD.rpartition(".")
    return f"{head}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}"


@pytest.mark.parametrize(
    ("value", "keys", "now", "valid"),
    [
        (GOOD, KEYS, NOW, True),
        (GOOD, KEYS, LATER - 1, True),
        (GOOD, KEYS, LATER, False),  # expired
        (GOOD, KEYS, LATER + 10, False),
        (GOOD, (KEY_1, KEY_0), NOW, False),  # the admin token changed: another key
        (GOOD, (), NOW, False),  # no admin token any more
        (GOOD.replace(f".{LATER}.", f".{LATER + 999}."), KEYS, NOW, False),  # a longer life written in
        (GOOD.replace("v1.0.", "v1.1."), KEYS, NOW, False),  # another admin's index
        (GOOD.replace("bm9uY2U", "bm9uY2V"), KEYS, NOW, False),  # another nonce
        (_tampered_mac(), KEYS, NOW, False),
        (GOOD.replace("v1.", "v2."), KEYS, NOW, False),  # wrong format
        (GOOD + ".extra", KEYS, NOW, False),
        (GOOD.rpartition(".")[0], KEYS, NOW, False),
        ("", KEYS, NOW, False),
        ("v1.x.1.n.m", KEYS, NOW, False),
        ("v1.0.-5.n.m", KEYS, NOW, False),
        ("v1.0.99999999999.é.m", KEYS, NOW, False),
        ("v1.0." + "9" * 300 + ".n.m", KEYS, NOW, False),
    ],
)
def test_a_cookie_is_accepted_only_as_signed_unexpired_and_under_a_current_key(
    value: str, keys: tuple[bytes, ...], now: float, valid: bool
) -> None:
    session = verify_session(keys, value, now)
    assert (session is not None) is valid
    if session is not None:
        assert (session.admin, session.expires, session.nonce) == (0, LATER, "bm9uY2U")


def test_each_login_gets_its_own_nonce_and_the_second_admin_token_its_own_key() -> None:
    first, second = sign_session(KEY_0, 0, LATER), sign_session(KEY_0, 0, LATER)
    assert first != second
    other = sign_session(KEY_1, 1, LATER)
    session = verify_session(KEYS, other, NOW)
    assert session is not None and session.admin == 1
    assert verify_session((KEY_0,), other, NOW) is None


SESSION = verify_session(KEYS, GOOD, NOW)


@pytest.mark.parametrize(
    ("presented", "valid"),
    [
        (csrf_token(KEY_0, "bm9uY2U").encode(), True),
        (None, False),
        (b"", False),
        (csrf_token(KEY_1, "bm9uY2U").encode(), False),  # another admin token's
        (csrf_token(KEY_0, "other").encode(), False),  # another session's
        (csrf_token(KEY_0, "bm9uY2U").encode()[:-1], False),
        (csrf_token(KEY_0, "bm9uY2U").encode() + b"x", False),
        (GOOD.encode(), False),  # the cookie itself is no CSRF token
    ],
)
def test_the_csrf_token_is_the_sessions_own(presented: bytes | None, valid: bool) -> None:
    assert SESSION is not None
    assert csrf_valid(SESSION, presented) is valid


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (None, None),
        (b"", None),
        (f"{COOKIE_NAME}=abc".encode(), "abc"),
        (f"theme=dark; {COOKIE_NAME}=abc; other=1".encode(), "abc"),
        (f"x{COOKIE_NAME}=abc".encode(), None),
        (f"{COOKIE_NAME}=a; {COOKIE_NAME}=b".encode(), None),  # sent twice: which one is meant is unclear
    ],
)
def test_the_cookie_is_read_from_the_cookie_header(header: bytes | None, value: str | None) -> None:
    assert cookie_value(header) == value


@pytest.mark.parametrize("secure", [False, True])
def test_the_set_cookie_flags(secure: bool) -> None:
    header = session_cookie("v", 28800, secure=secure).decode()
    flags = header.split("; ")
    assert flags[0] == f"{COOKIE_NAME}=v"
    assert set(flags[1:]) == {"Max-Age=28800", "Path=/admin", "HttpOnly", "SameSite=Strict"} | (
        {"Secure"} if secure else set()
    )
    assert "Max-Age=0" in clear_cookie(secure=secure).decode()


def test_logged_out_sessions_are_refused_until_they_expire_and_the_set_is_bounded() -> None:
    revoked = Revocations(capacity=2)
    later = int(time.time()) + 3600
    sessions = [ConsoleSession(0, later, f"n{i}", "c") for i in range(3)]
    revoked.revoke(sessions[0])
    assert sessions[0] in revoked and sessions[1] not in revoked
    revoked.revoke(sessions[1])
    revoked.revoke(sessions[2])
    assert sessions[0] not in revoked  # the oldest went: the set holds at most `capacity`
    assert sessions[1] in revoked and sessions[2] in revoked
    expired = ConsoleSession(0, int(time.time()) - 1, "old", "c")
    fresh = Revocations()
    fresh.revoke(expired)
    assert expired not in fresh  # an expired session is refused by its expiry; the set forgets it


def test_console_pages_carry_the_strict_csp() -> None:
    headers = dict(page_headers())
    assert headers[b"content-security-policy"].decode() == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    assert "unsafe" not in CSP
