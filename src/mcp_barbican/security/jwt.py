"""JWT bearer tokens (RFC 7519, RFC 8725): verify one, or say in a few words why not.

The decisions are pure functions: `read_header` (shape, `alg` allowlist, `none` refused),
`claims_problem` (`exp` required, `nbf`, `iss`, `aud`, required claims, all against an
injected clock), `parse_jwks` (which published keys may verify which algorithms) and
`principal_from_claims`. `JwtVerifier` ties them to the one key source of an `auth.jwt`
block: a secret, a PEM file, or a JWKS URL kept by `JwksCache`.

Every key is bound to the algorithms it may verify, taken from its own type and the
configured allowlist, so the token's `alg` header can only pick among them: an HMAC secret
comes only from `secret`, never from a public PEM or a JWKS. The JWKS is fetched with a TTL;
a `kid` it lacks starts one shared refresh at most once per cooldown; a failed fetch keeps
the last good key set. Failure reasons go to the client: they never quote the token, and
attacker-chosen header values are shortened and ASCII-escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
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
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.auth import AuthFailure
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.config import JwtConfig

__all__ = [
    "ANY_VALUE",
    "JWKS_FETCH_TIMEOUT",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "MAX_TOKEN_CHARS",
    "MIN_RSA_BITS",
    "ClaimRules",
    "JwksCache",
    "JwtVerifier",
    "PublicKey",
    "TokenHeader",
    "VerificationKey",
    "check_key_file",
    "claims_problem",
    "compatible_algorithms",
    "describe_key",
    "load_public_key",
    "parse_jwks",
    "principal_from_claims",
    "read_header",
]

logger = logging.getLogger(__name__)

#: Longer tokens are refused unparsed: real access tokens stay far below, and parsing is work.
MAX_TOKEN_CHARS: Final = 16_384
#: Keys kept from one JWKS: identity providers publish a handful, and memory stays bounded.
MAX_JWKS_KEYS: Final = 100
#: A larger JWKS document is a failed fetch, so a hostile endpoint cannot fill memory.
MAX_JWKS_BYTES: Final = 512 * 1024
#: Seconds a JWKS fetch may take before it counts as failed (the last good keys stay).
JWKS_FETCH_TIMEOUT: Final = 10.0
#: A `required_claims` value meaning "present, with any value".
ANY_VALUE: Final = "*"
#: RSA keys below this size are too weak to trust (NIST SP 800-131A).
MIN_RSA_BITS: Final = 2048
#: How much of an attacker-chosen header value (`alg`, `kid`) a reason quotes.
_SHOWN_CHARS: Final = 40

_JWS_COMPACT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_PUBLIC_KEY_TYPES: Final = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
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

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


def _shown(value: str) -> str:
    return ascii(value[:_SHOWN_CHARS])


def _malformed(detail: str = "") -> AuthFailure:
    return AuthFailure(f"malformed token: {detail}" if detail else "malformed token")


def _bad_claims(detail: str) -> AuthFailure:
    return AuthFailure(f"invalid claims: {detail}")


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class VerificationKey:
    """A key and the algorithms it may verify; `kid` None matches any token `kid`."""

    kid: str | None
    key: PublicKey | bytes = field(repr=False)
    algorithms: frozenset[str]

    def verifies(self, alg: str, kid: str | None) -> bool:
        return alg in self.algorithms and (kid is None or self.kid is None or self.kid == kid)


def compatible_algorithms(key: PublicKey | bytes) -> frozenset[str]:
    """The JWS algorithms a key of this type and size can verify (RFC 8725 §3.1: one family per key)."""
    if isinstance(key, bytes):
        return _HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS if key.key_size >= MIN_RSA_BITS else frozenset()
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    return frozenset({"EdDSA"})


def describe_key(key: PublicKey | bytes) -> str:
    if isinstance(key, bytes):
        return "HMAC secret"
    if isinstance(key, rsa.RSAPublicKey):
        return f"{key.key_size}-bit RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name} key"
    return "Ed25519 key" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448 key"


def load_public_key(path: Path) -> PublicKey:
    """The public key in a PEM file (a public key or a certificate); ValueError says what is wrong."""
    data = path.read_bytes()
    if b"PRIVATE KEY-----" in data:
        raise ValueError("it holds a private key; give the public key (openssl pkey -pubout)")
    if b"-----BEGIN CERTIFICATE-----" in data:
        key: object = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = load_pem_public_key(data)
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def _jwks_key(raw: object, allowed: frozenset[str]) -> VerificationKey | None:
    if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
        return None
    ops = raw.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid, alg = raw.get("kid"), raw.get("alg")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
        return None
    try:
        key = jwt.PyJWK(raw).key
    except Exception:  # one bad key in a published set must not spoil the others
        logger.debug("JWKS: skipping a key that does not parse (kid %s)", _shown(str(kid)))
        return None
    # Public keys only: a published symmetric key is no secret, and a published private key is a leak.
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        return None
    algorithms = compatible_algorithms(key) & allowed
    if alg is not None:
        algorithms &= {alg}
    return VerificationKey(kid, key, algorithms) if algorithms else None


def parse_jwks(document: object, allowed: frozenset[str], limit: int = MAX_JWKS_KEYS) -> tuple[VerificationKey, ...]:
    """The usable signing keys of a JWK Set (at most `limit`); ValueError if it is not one.

    Kept: keys for signatures (`use` absent or `sig`, `key_ops` absent or with `verify`),
    public, of a type that verifies an allowed algorithm (the key's own `alg` if it names one).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set (no 'keys' list)")
    keys: list[VerificationKey] = []
    for raw in document["keys"]:
        key = _jwks_key(raw, allowed)
        if key is not None:
            keys.append(key)
            if len(keys) == limit:
                break
    return tuple(keys)


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
        return AuthFailure(f"algorithm {_shown(alg)} is not allowed")
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
            return _bad_claims(f"{_shown(name)} is required")
        if expected != ANY_VALUE and not _same_value(actual, expected):
            return _bad_claims(f"{_shown(name)} does not have the required value")
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
            failure = AuthFailure(f"no usable key for algorithm {_shown(alg)}")
        except jwt.PyJWTError:
            return _malformed()
    return failure


# ---------------------------------------------------------------------------------------------
# JWKS


class JwksCache:
    """The signing keys published at one JWKS URL.

    Fetched by `start()` and again once `ttl` has passed (in the background: the current
    keys verify meanwhile). A token whose `kid` no key has waits for a refresh; concurrent
    ones share it, and fetches happen at most once per `cooldown` whatever asks for them.
    A failed fetch (network, status, size, JSON, no usable key) keeps the last good set.
    """

    def __init__(
        self,
        url: str,
        *,
        allowed: frozenset[str],
        ttl: float,
        cooldown: float,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.allowed = allowed
        self.ttl = ttl
        self.cooldown = cooldown
        self.keys: tuple[VerificationKey, ...] = ()
        self.fetches_ok = 0
        self.fetches_failed = 0
        self._http = http
        self._clock = clock
        self._own_session: aiohttp.ClientSession | None = None
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    def matching(self, alg: str, kid: str | None) -> list[VerificationKey]:
        return [key for key in self.keys if key.verifies(alg, kid)]

    async def keys_for(self, alg: str, kid: str | None) -> list[VerificationKey]:
        found = self.matching(alg, kid)
        if not found:
            task = self._refresh()
            if task is not None:
                await asyncio.shield(task)  # a caller that gives up must not cancel the shared fetch
                found = self.matching(alg, kid)
        elif self._fetched_at is None or self._clock() - self._fetched_at >= self.ttl:
            self._refresh()
        return found

    async def start(self) -> None:
        """Fetch now (logging the outcome); never raises, a failure is retried lazily."""
        logger.info("JWKS %s: fetching signing keys", self.url)
        task = self._refresh()
        if task is not None:
            await task

    async def aclose(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def _refresh(self) -> asyncio.Task[None] | None:
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self.cooldown:
            return None
        self._last_attempt = now
        self._inflight = asyncio.get_running_loop().create_task(self._fetch(), name=f"JWKS fetch {self.url}")
        return self._inflight

    async def _fetch(self) -> None:
        try:
            keys = parse_jwks(await self._download(), self.allowed)
            if not keys:
                raise ValueError("no usable signing key in the set")
        except Exception as exc:  # whatever went wrong, the last good keys stay in use
            self.fetches_failed += 1
            kept = f"keeping the {len(self.keys)} keys of the last good fetch" if self.keys else "no keys yet"
            logger.warning(
                "JWKS %s: fetch failed (%s); %s; next try in %gs at the earliest",
                self.url,
                str(exc) or type(exc).__name__,
                kept,
                self.cooldown,
            )
            return
        self.keys = keys
        self._fetched_at = self._clock()
        self.fetches_ok += 1
        logger.info("JWKS %s: %d signing keys (%s)", self.url, len(keys), ", ".join(_shown(str(k.kid)) for k in keys))

    async def _download(self) -> object:
        timeout = aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT)
        # No redirects: the configured URL is the trusted source, not wherever it points.
        async with self._session().get(
            self.url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}
        ) as response:
            if response.status != 200:
                raise ValueError(f"HTTP status {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
        return orjson.loads(body)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is not None:
            return self._http()
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session


# ---------------------------------------------------------------------------------------------
# The verifier


def _static_keys(config: JwtConfig, allowed: frozenset[str]) -> tuple[VerificationKey, ...]:
    keys: list[VerificationKey] = []
    if config.secret is not None:
        keys.append(VerificationKey(None, config.secret.get_secret_value().encode(), allowed & _HMAC_ALGORITHMS))
    if config.public_key_file is not None:
        path = Path(config.public_key_file)
        try:
            key = load_public_key(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot use public_key_file {str(path)!r}: {exc}") from None
        algorithms = compatible_algorithms(key) & allowed
        if not algorithms:
            raise ConfigError(
                f"public_key_file {str(path)!r} ({describe_key(key)}) verifies none of "
                f"{', '.join(sorted(allowed))} (RSA keys need {MIN_RSA_BITS} bits or more)"
            )
        keys.append(VerificationKey(None, key, algorithms))
    return tuple(keys)


def check_key_file(config: JwtConfig) -> None:
    """Load `public_key_file` as the verifier does (for `config check`); ConfigError says what is wrong."""
    _static_keys(config, frozenset(config.algorithms))


class JwtVerifier:
    """Verifies the JWT bearer tokens of one `auth.jwt` block (an `Authenticator`)."""

    def __init__(
        self,
        config: JwtConfig,
        *,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.allowed = frozenset(config.algorithms)
        self.rules = ClaimRules.from_config(config)
        self.static_keys = _static_keys(config, self.allowed)
        self.jwks = (
            JwksCache(
                config.jwks_url,
                allowed=self.allowed,
                ttl=config.jwks_cache_ttl,
                cooldown=config.jwks_refresh_cooldown,
                http=http,
                clock=clock,
            )
            if config.jwks_url is not None
            else None
        )
        self._clock = clock
        if not self.rules.audience:
            logger.warning("JWT: no audience configured; tokens the issuer made for other services are accepted too")

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
                return AuthFailure(f"no key for kid {_shown(header.kid)}")
            return AuthFailure(f"no key for algorithm {_shown(header.alg)}")
        claims = _signed_claims(token, header.alg, keys)
        if isinstance(claims, AuthFailure):
            return claims
        return claims_problem(claims, self.rules, self._clock()) or principal_from_claims(claims)

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        """`verify` under the name the authentication layer calls."""
        return await self.verify(credential)
