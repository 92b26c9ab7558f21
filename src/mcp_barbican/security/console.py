"""The web console's session: a stateless signed cookie and the CSRF token derived from it.

The cookie is `v1.{admin}.{expires}.{nonce}.{mac}`: which admin token logged in (its index, as
in the principal `admin:{index}`), until when (epoch seconds), a random nonce, and an HMAC-SHA256
over the rest keyed by HKDF from that admin token's digest. Every replica and worker with the same
admin tokens accepts it, no state is shared, and changing an admin token logs its sessions out.
The CSRF token is another HMAC of the nonce under a key of its own, so a page can carry it while
the cookie stays HttpOnly. Logging out adds the nonce to a bounded per-process revocation set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from mcp_barbican.keys import hkdf

__all__ = [
    "CONSOLE_SESSION_KEY",
    "COOKIE_NAME",
    "CSRF_HEADER",
    "ConsoleSession",
    "Revocations",
    "clear_cookie",
    "cookie_value",
    "csrf_token",
    "csrf_valid",
    "session_cookie",
    "sign_session",
    "verify_session",
]

COOKIE_NAME: Final = "barbican_console"
CSRF_HEADER: Final = b"x-csrf-token"
#: Where the guard puts the ConsoleSession of a request the cookie authenticated.
CONSOLE_SESSION_KEY: Final = "mcp_barbican.console_session"
_VERSION: Final = "v1"
_NONCE_BYTES: Final = 16
_MAX_COOKIE: Final = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: bytes, purpose: bytes, message: str) -> str:
    return _b64(hmac.new(hkdf(key, b"mcp-barbican console " + purpose), message.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class ConsoleSession:
    """A verified console session."""

    admin: int
    expires: int
    nonce: str
    csrf: str


def sign_session(key: bytes, admin: int, expires: int, nonce: str | None = None) -> str:
    """A cookie value for admin token `admin` (whose digest is `key`), valid until `expires`."""
    nonce = nonce or _b64(secrets.token_bytes(_NONCE_BYTES))
    body = f"{_VERSION}.{admin}.{expires}.{nonce}"
    return f"{body}.{_mac(key, b'session', body)}"


def csrf_token(key: bytes, nonce: str) -> str:
    return _mac(key, b"csrf", nonce)


def verify_session(keys: tuple[bytes, ...], value: str, now: float) -> ConsoleSession | None:
    """The session a cookie value holds, None when it is malformed, forged, for no current key or expired."""
    if len(value) > _MAX_COOKIE:
        return None
    parts = value.split(".")
    if len(parts) != 5 or parts[0] != _VERSION:
        return None
    _, admin_text, expires_text, nonce, mac = parts
    if not (admin_text.isdigit() and expires_text.isdigit() and nonce):
        return None
    admin = int(admin_text)
    if admin >= len(keys):
        return None
    expected = _mac(keys[admin], b"session", ".".join(parts[:4]))
    if not hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace")):
        return None
    expires = int(expires_text)
    if expires <= now:
        return None
    return ConsoleSession(admin, expires, nonce, csrf_token(keys[admin], nonce))


def csrf_valid(session: ConsoleSession, presented: bytes | None) -> bool:
    """Whether a request carries its session's CSRF token (compared in constant time)."""
    if presented is None:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented)


def cookie_value(header: bytes | None) -> str | None:
    """The console cookie's value in a Cookie header (None when absent or sent twice)."""
    if header is None:
        return None
    found: list[str] = []
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME:
            found.append(value)
    return found[0] if len(found) == 1 else None


def session_cookie(value: str, max_age: int, *, secure: bool) -> bytes:
    """The Set-Cookie value: only ever sent back to /admin, never readable by scripts, never cross-site."""
    flags = f"; Max-Age={max_age}; Path=/admin; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    return f"{COOKIE_NAME}={value}{flags}".encode("latin-1")


def clear_cookie(*, secure: bool) -> bytes:
    return session_cookie("", 0, secure=secure)


class Revocations:
    """Nonces of sessions logged out before they expired, kept until then; at most `capacity` (oldest go)."""

    def __init__(self, capacity: int = 10000) -> None:
        self.capacity = capacity
        self._until: OrderedDict[str, int] = OrderedDict()

    def revoke(self, session: ConsoleSession) -> None:
        self._until[session.nonce] = session.expires
        while len(self._until) > self.capacity:
            self._until.popitem(last=False)

    def __contains__(self, session: object) -> bool:
        if not isinstance(session, ConsoleSession):
            return False
        now = time.time()
        while self._until and next(iter(self._until.values())) <= now:
            self._until.popitem(last=False)
        return session.nonce in self._until
