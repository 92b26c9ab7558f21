"""Client authentication for one MCP: static bearer tokens or JWTs, one layer for both.

Static tokens are never kept in clear: each configured token is hashed once at start, and
a presented credential is hashed and compared against every digest with
`hmac.compare_digest`, so timing reveals neither which token nor how much of it matched.
The credential comes only from the configured header (never the query string) and is
removed from the scope before anything downstream can forward or log it. A valid
credential that does not reach this MCP is a 403, not a 401.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY, json_error
from mcp_barbican.audit.events import AuditEvent, EventType, request_fields
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.pipeline import Head, Policy
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.tokens import STORE_UNAVAILABLE, IssuedTokens
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import AuthConfig

__all__ = [
    "CREDENTIAL_KEY",
    "MISSING_CREDENTIALS",
    "AuthFailure",
    "Authenticate",
    "Authenticator",
    "StaticToken",
    "StaticTokens",
    "Verifier",
    "bearer_credential",
    "digest",
]

_PROBLEM_WORDS: Final = "malformed credentials"
#: The reason when no credential was sent at all.
MISSING_CREDENTIALS: Final = "missing credentials"
#: Scope key of the accepted credential's header value, for `upstream_auth: token_exchange` only (its subject
#: token); the header itself is removed from the request, so the credential is never forwarded upstream.
CREDENTIAL_KEY: Final = "mcp_barbican.credential"
#: Accepted header values remembered per layer (all are forgotten when it is full).
_KNOWN_MAX: Final = 1024


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class AuthFailure:
    """Why a credential was refused (the text goes to the client: it never holds the credential)."""

    reason: str
    error: str = "invalid_token"
    status: int = 401
    #: The scopes a 403 insufficient_scope asks for (RFC 6750 §3 `scope`).
    scope: str | None = None


_STORE_DOWN: Final = AuthFailure(
    "the state store is unreachable: tokens issued through the admin API are refused until it returns",
    STORE_UNAVAILABLE,
    503,
)


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Principal | AuthFailure: ...


@runtime_checkable
class Verifier(Authenticator, Protocol):
    """An authenticator with keys or connections to set up at start and close at the end."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


def bearer_credential(value: str | None, prefix: str) -> str | AuthFailure:
    """The credential inside an Authorization-style header value, or why there is none."""
    if value is None or not value.strip():
        return AuthFailure(MISSING_CREDENTIALS)
    if not value.isascii() or not value.isprintable():
        return AuthFailure(_PROBLEM_WORDS)
    if not prefix:
        return value.strip()
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != prefix.lower() or not credential.strip() or " " in credential.strip():
        return AuthFailure(_PROBLEM_WORDS)
    return credential.strip()


@dataclass(frozen=True)
class StaticToken:
    id: str
    sha256: bytes
    expires_at: datetime | None = None
    roles: tuple[str, ...] = ()
    mcps: tuple[str, ...] | None = None


class StaticTokens:
    """The configured tokens of one MCP (several may be valid at once, for rotation)."""

    def __init__(
        self,
        tokens: Iterable[StaticToken],
        *,
        issued: IssuedTokens | None = None,
        now: Callable[[], datetime] | None = None,
        kind: str = "token",
    ) -> None:
        self.tokens = tuple(tokens)
        #: Tokens issued through the admin API, accepted besides the configured ones.
        #: Its `generation` also counts revocations here, so one number says when verdicts may have changed.
        self.issued = issued if issued is not None else IssuedTokens()
        self._revoked: set[bytes] = set()
        # Built once: a frozen dataclass costs microseconds to make, per request.
        self._principals = {
            token.sha256: Principal(id=f"{kind}:{token.id}", kind=kind, roles=token.roles, mcps=token.mcps)
            for token in self.tokens
        }
        self._now = now or (lambda: datetime.now(UTC))

    @classmethod
    def from_config(cls, auth: AuthConfig, *, owner: str, issued: IssuedTokens | None = None) -> StaticTokens:
        """`owner` names the single `token`'s principal: `server` (server.auth) or `mcp:{id}` (an MCP's own).

        Listed ids cannot hold ':' nor be `server`, so no listed or issued token shares its principal.
        """
        tokens = []
        if auth.token is not None:
            tokens.append(StaticToken(owner, digest(auth.token.get_secret_value())))
        for entry in auth.tokens:
            if entry.token is not None:
                hashed = digest(entry.token.get_secret_value())
            else:
                assert entry.sha256 is not None
                hashed = bytes.fromhex(entry.sha256)
            scope = tuple(entry.mcps) if entry.mcps else None
            tokens.append(StaticToken(entry.id, hashed, entry.expires_at, tuple(entry.roles), scope))
        return cls(tokens, issued=issued)

    def revoke(self, token_digest: bytes) -> None:
        self._revoked.add(token_digest)
        self.issued.generation += 1

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        return self.verify(credential)[0]

    def verify(self, credential: str) -> tuple[Principal | AuthFailure, float]:
        """The verdict, and until when (epoch seconds) an accepted credential stays valid."""
        presented = digest(credential)
        found: StaticToken | None = None
        for token in self.tokens:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, token.sha256):
                found = token
        if found is None:
            verdict, until = self.issued.lookup(presented, time.time())
            if isinstance(verdict, str):
                return (_STORE_DOWN if verdict == STORE_UNAVAILABLE else AuthFailure(verdict)), 0.0
            return (verdict, until) if verdict is not None else (AuthFailure("invalid token"), 0.0)
        if found.sha256 in self._revoked:
            return AuthFailure("token revoked"), 0.0
        if found.expires_at is not None and found.expires_at <= self._now():
            return AuthFailure("token expired"), 0.0
        until = math.inf if found.expires_at is None else found.expires_at.timestamp()
        return self._principals[found.sha256], until


class Authenticate(Policy):
    """401 without a valid credential, 403 when it does not reach this MCP; else the principal."""

    slot = "authentication"

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        header: str,
        prefix: str,
        mcp_id: str,
        counters: SecurityCounters,
        challenge: Callable[[AuthFailure, Scope], str],
        on_failure: Callable[[str | None], None] | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        #: None when nothing is recorded: the builder passes a trail only if it has a sink.
        self.audit = audit
        self.authenticator = authenticator
        self.header = header.lower().encode("latin-1")
        self.fast_headers = self.consumes = (self.header,)
        self._repeated = AuthFailure(f"more than one {header} header", "invalid_request", 400)
        self.prefix = prefix
        self.mcp_id = mcp_id
        self.counters = counters
        self.challenge = challenge
        self.on_failure = on_failure
        #: Static tokens decide synchronously and say how long a verdict holds: those are remembered.
        self._tokens = authenticator if isinstance(authenticator, StaticTokens) else None
        self._known: dict[bytes | None, tuple[Principal, float, int]] = {}

    @property
    def remembers(self) -> bool:
        """Whether accepted credentials are remembered (static tokens; JWTs are verified each time)."""
        return self._tokens is not None

    @property
    def decides_fast(self) -> bool:
        return self.remembers

    def fast(self, scope: Scope, head: Head) -> bool:
        principal = self.remembered(head.values.get(self.header), time.time())
        if principal is None:
            return False
        head.principal = principal
        return True

    def settle(self, scope: Scope, head: Head) -> Awaitable[None] | None:
        principal = head.principal
        assert principal is not None
        scope[CREDENTIAL_KEY] = head.values.get(self.header)
        self.admit(scope, principal, head.kept)
        return self.record_success(scope, principal) if self.audit is not None else None

    def remembered(self, raw: bytes | None, now: float) -> Principal | None:
        """The principal of a header value accepted before and still valid at `now` (epoch), else None.

        Only static tokens are remembered, keyed by the header value as sent: a lookup learns
        nothing about a stored token (the dict compares keyed hashes first), and failures are
        never remembered, so every wrong guess takes the constant-time path.
        """
        entry = self._known.get(raw)
        tokens = self._tokens
        if entry is None or tokens is None or now >= entry[1] or entry[2] != tokens.issued.generation:
            return None
        return entry[0]

    def admit(self, scope: Scope, principal: Principal, headers: list[tuple[bytes, bytes]]) -> None:
        """Hand the principal on; `headers` are the request's without the credential's header."""
        self.counters.authentication_attempts += 1
        scope["headers"] = headers
        scope[PRINCIPAL_KEY] = principal

    async def record_success(self, scope: Scope, principal: Principal) -> None:
        if self.audit is not None:
            await self._audit(scope, "authentication", True, principal.id, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.header
        headers = scope["headers"]
        raw: bytes | None = None
        for key, value in headers:
            if key == name:
                if raw is not None:
                    # Ambiguous: another hop may read the other value. RFC 6750 section 3.1: a 400.
                    self.counters.authentication_attempts += 1
                    await self._refuse(scope, send, self._repeated)
                    return
                raw = value
        credential = bearer_credential(raw.decode("latin-1") if raw is not None else None, self.prefix)
        until = 0.0
        if isinstance(credential, AuthFailure):
            verdict: Principal | AuthFailure = credential
        elif self._tokens is not None:
            verdict, until = self._tokens.verify(credential)
        else:
            verdict = await self.authenticator.authenticate(credential)
        if isinstance(verdict, AuthFailure):
            self.counters.authentication_attempts += 1
            await self._refuse(scope, send, verdict)
            return
        if not verdict.reaches(self.mcp_id):
            self.counters.authentication_attempts += 1
            self.counters.violation()
            if self.audit is not None:
                await self._audit(scope, "authorization", False, verdict.id, "insufficient_scope")
            refusal = AuthFailure("this credential does not reach this MCP", "insufficient_scope")
            challenge = self.challenge(refusal, scope)
            headers = [(b"www-authenticate", challenge.encode("latin-1"))]
            await json_error(
                send, 403, "insufficient_scope", f"this credential does not reach MCP {self.mcp_id!r}", headers
            )
            return
        if until > time.time() and self._tokens is not None:
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[raw] = (verdict, until, self._tokens.issued.generation)
        scope[CREDENTIAL_KEY] = raw
        self.admit(scope, verdict, [header for header in headers if header[0] != name])
        await self.record_success(scope, verdict)
        await self.app(scope, receive, send)

    async def _audit(self, scope: Scope, kind: EventType, success: bool, user: str | None, error: str | None) -> None:
        assert self.audit is not None
        event = AuditEvent(
            kind,
            "authenticate" if kind == "authentication" else "reach",
            success,
            resource=f"mcp:{self.mcp_id}",
            user=user,
            error=error,
            mcp=self.mcp_id,
            **request_fields(scope),
        )
        await self.audit.emit(event)

    async def _refuse(self, scope: Scope, send: Send, failure: AuthFailure) -> None:
        if self.audit is not None:
            await self._audit(scope, "authentication", False, None, failure.reason)
        if failure.status >= 500:  # the store is down: no fault of the client's, and no challenge to answer
            await json_error(send, failure.status, failure.error, failure.reason)
            return
        self.counters.authentication_failures += 1
        self.counters.violation()
        if self.on_failure is not None and failure.status < 403:  # a valid token short of a scope is no guess
            self.on_failure(scope.get(CLIENT_IP_KEY))
        headers = [(b"www-authenticate", self.challenge(failure, scope).encode("latin-1"))]
        await json_error(send, failure.status, failure.error, failure.reason, headers)
