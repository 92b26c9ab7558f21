"""JWT bearer tokens (RFC 7519, RFC 8725): verify one, or say in a few words why not.

The decisions are pure functions: `read_header` (shape, `alg` allowlist, `none` refused),
`claims_problem` (`exp` required, `nbf`, `iss`, `aud`, required claims, all against an
injected clock) and `principal_from_claims`. `JwtVerifier` ties them to the one key source
of an `auth.jwt` block: a secret, a PEM file, or a JWKS URL kept by `jwks.JwksCache`.

Every key is bound to the algorithms it may verify, taken from its own type and the
configured allowlist, so the token's `alg` header can only pick among them: an HMAC secret
comes only from `secret`, never from a public PEM or a JWKS. Failure reasons go to the
client: they never quote the token, and attacker-chosen header values are shortened and
ASCII-escaped.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import jwt
from jwt.types import Options

from mcp_barbican.exceptions import ConfigError
from mcp_barbican.keys import compatible_algorithms, load_key_file
from mcp_barbican.security.auth import AuthFailure
from mcp_barbican.security.jwks import JwksCache, VerificationKey, shown
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.config import JwtConfig

__all__ = [
    "ANY_VALUE",
    "MAX_TOKEN_CHARS",
    "ClaimRules",
    "JwtVerifier",
    "TokenHeader",
    "claims_problem",
    "principal_from_claims",
    "read_header",
]

logger = logging.getLogger(__name__)

#: Longer tokens are refused unparsed: real access tokens stay far below, and parsing is work.
MAX_TOKEN_CHARS: Final = 16_384
#: A `required_claims` value meaning "present, with any value".
ANY_VALUE: Final = "*"

_JWS_COMPACT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Claims are checked by `claims_problem` against the injected clock, so PyJWT checks only the signature.
_SIGNATURE_ONLY: Final[Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
    "enforce_minimum_key_length": True,
}


def _malformed(detail: str = "") -> AuthFailure:
    return AuthFailure(f"malformed token: {detail}" if detail else "malformed token")


def _bad_claims(detail: str) -> AuthFailure:
    return AuthFailure(f"invalid claims: {detail}")


# ---------------------------------------------------------------------------------------------
# PEM keys


# ---------------------------------------------------------------------------------------------
# Header and claims


@dataclass(frozen=True)
class TokenHeader:
    alg: str
    kid: str | None


def read_header(token: str, allowed: frozenset[str]) -> TokenHeader | AuthFailure:
    """The token's `alg` and `kid` if it is a compact JWS whose `alg` is allowed."""
    if len(token) > MAX_TOKEN_CHARS:
        return _malformed("too long")
    if not _JWS_COMPACT.fullmatch(token):  # PyJWT refuses these too; odd input never reaches a parser
        return _malformed()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return _malformed()
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        return _malformed("no 'alg' header")
    if alg.strip().lower() == "none":
        return AuthFailure("algorithm 'none' is not allowed")
    if alg not in allowed:
        return AuthFailure(f"algorithm {shown(alg)} is not allowed")
    if kid is not None and not isinstance(kid, str):
        return _malformed("'kid' is not a string")
    return TokenHeader(alg, kid)


@dataclass(frozen=True)
class ClaimRules:
    """What the claims of a correctly signed token must say."""

    issuer: str | None = None
    audience: frozenset[str] = frozenset()  # empty: `aud` is not checked
    required: Mapping[str, Any] = field(default_factory=dict)
    leeway: float = 60.0

    @classmethod
    def from_config(cls, config: JwtConfig) -> ClaimRules:
        audience = config.audience
        accepted = frozenset([audience] if isinstance(audience, str) else audience or ())
        return cls(config.issuer, accepted, dict(config.required_claims), config.leeway)


def _is_number(value: object) -> bool:
    # NaN never expires (every comparison is false) and JSON parsers accept it: refuse it.
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _same_value(actual: object, expected: object) -> bool:
    """JSON equality: `true` is not `1`, lists compare item by item, objects key by key."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(map(_same_value, actual, expected))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(_same_value(actual[name], value) for name, value in expected.items())
        )
    if isinstance(actual, list | tuple | dict):
        return False
    return bool(actual == expected)


def _audience_problem(claims: Mapping[str, Any], accepted: frozenset[str]) -> AuthFailure | None:
    aud = claims.get("aud")
    if aud is None:
        return _bad_claims("'aud' is required")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        return _bad_claims("'aud' must be a string or a list of strings")
    if accepted.isdisjoint(values):
        return _bad_claims("'aud' does not name this resource")
    return None


def claims_problem(claims: Mapping[str, Any], rules: ClaimRules, now: float) -> AuthFailure | None:
    """Why these verified claims are not acceptable at `now` (Unix seconds), or None."""
    exp = claims.get("exp")
    if exp is None:
        return _bad_claims("'exp' is required")
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_number(claims[name]):
            return _bad_claims(f"'{name}' must be a number")
    if exp <= now - rules.leeway:
        return AuthFailure("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + rules.leeway:
        return _bad_claims("token not valid yet ('nbf' is in the future)")
    sub, iss = claims.get("sub"), claims.get("iss")
    if not isinstance(sub, str) or not sub:
        return _bad_claims("'sub' is required")  # the principal id is made of it
    if iss is not None and not isinstance(iss, str):
        return _bad_claims("'iss' must be a string")
    if rules.issuer is not None and iss != rules.issuer:
        return _bad_claims("'iss' is required" if iss is None else "'iss' is not the accepted issuer")
    if rules.audience:
        problem = _audience_problem(claims, rules.audience)
        if problem is not None:
            return problem
    for name, expected in rules.required.items():
        actual = claims.get(name)
        if actual is None:
            return _bad_claims(f"{shown(name)} is required")
        if expected != ANY_VALUE and not _same_value(actual, expected):
            return _bad_claims(f"{shown(name)} does not have the required value")
    return None


def _strings(value: object) -> tuple[str, ...]:
    # A malformed list grants nothing rather than part of itself.
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return ()


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The caller a token with acceptable claims stands for."""
    sub, iss = claims["sub"], claims.get("iss")
    scope, scp = claims.get("scope"), claims.get("scp")
    if isinstance(scope, str):
        scopes = tuple(scope.split())
    elif isinstance(scp, str):
        scopes = tuple(scp.split())  # Azure AD sends `scp` as a space-separated string
    else:
        scopes = _strings(scp)
    return Principal(
        id=f"jwt:{iss}:{sub}" if iss else f"jwt:{sub}",
        kind="jwt",
        roles=_strings(claims.get("roles")),
        scopes=scopes,
        claims=dict(claims),
    )


def _signed_claims(token: str, alg: str, keys: Sequence[VerificationKey]) -> dict[str, Any] | AuthFailure:
    failure = AuthFailure("invalid signature")
    for candidate in keys:
        try:
            return jwt.decode(token, candidate.key, algorithms=[alg], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidKeyError:  # e.g. PyJWT refusing a PEM-shaped HMAC secret
            failure = AuthFailure(f"no usable key for algorithm {shown(alg)}")
        except jwt.PyJWTError:
            return _malformed()
    return failure


# ---------------------------------------------------------------------------------------------
# The verifier


def _static_keys(config: JwtConfig, allowed: frozenset[str]) -> tuple[VerificationKey, ...]:
    keys: list[VerificationKey] = []
    if config.secret is not None:
        secret = config.secret.get_secret_value().encode()
        keys.append(VerificationKey(None, secret, allowed & compatible_algorithms(secret)))
    if config.public_key_file is not None:
        try:
            key, algorithms = load_key_file(Path(config.public_key_file), allowed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        keys.append(VerificationKey(None, key, algorithms))
    return tuple(keys)


class JwtVerifier:
    """Verifies the JWT bearer tokens of one `auth.jwt` block (an `Authenticator`)."""

    def __init__(
        self,
        config: JwtConfig,
        *,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        allowed = frozenset(config.algorithms)
        jwks = (
            JwksCache(
                config.jwks_url,
                allowed=allowed,
                ttl=config.jwks_cache_ttl,
                cooldown=config.jwks_refresh_cooldown,
                http=http,
                clock=clock,
            )
            if config.jwks_url is not None
            else None
        )
        self._setup(allowed, ClaimRules.from_config(config), _static_keys(config, allowed), jwks, clock)
        if not self.rules.audience:
            logger.warning("JWT: no audience configured; tokens the issuer made for other services are accepted too")

    @classmethod
    def with_jwks(cls, jwks: JwksCache, rules: ClaimRules, *, clock: Callable[[], float] = time.time) -> JwtVerifier:
        """A verifier of the tokens signed by the keys of `jwks` (e.g. found through an issuer's metadata)."""
        verifier = cls.__new__(cls)
        verifier._setup(jwks.allowed, rules, (), jwks, clock)
        return verifier

    def _setup(
        self,
        allowed: frozenset[str],
        rules: ClaimRules,
        static_keys: tuple[VerificationKey, ...],
        jwks: JwksCache | None,
        clock: Callable[[], float],
    ) -> None:
        self.allowed = allowed
        self.rules = rules
        self.static_keys = static_keys
        self.jwks = jwks
        self._clock = clock

    async def start(self) -> None:
        if self.jwks is not None:
            await self.jwks.start()

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()

    async def verify(self, token: str) -> Principal | AuthFailure:
        header = read_header(token, self.allowed)
        if isinstance(header, AuthFailure):
            return header
        keys = [key for key in self.static_keys if key.verifies(header.alg, header.kid)]
        if not keys and self.jwks is not None:
            keys = await self.jwks.keys_for(header.alg, header.kid)
        if not keys:
            if header.kid is not None and self.jwks is not None:
                return AuthFailure(f"no key for kid {shown(header.kid)}")
            return AuthFailure(f"no key for algorithm {shown(header.alg)}")
        claims = _signed_claims(token, header.alg, keys)
        if isinstance(claims, AuthFailure):
            return claims
        return claims_problem(claims, self.rules, self._clock()) or principal_from_claims(claims)

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        """`verify` under the name the authentication layer calls."""
        return await self.verify(credential)
