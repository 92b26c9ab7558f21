"""Client authentication (`server.auth`, `mcps[].auth`): static tokens, JWT, OAuth 2.1 metadata, mTLS."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import (
    VISIBLE_ASCII,
    Duration,
    HttpUrl,
    McpId,
    Model,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    TokenSecret,
    check_header_name,
)

__all__ = [
    "JWT_ALGORITHMS",
    "SERVER_OWNER",
    "AuthConfig",
    "IntrospectionConfig",
    "JwtConfig",
    "MtlsConfig",
    "OAuth2Config",
    "TokenEntry",
    "sha256_hex",
]

#: JWS algorithms a JWT may be configured to accept ("none" never is).
JWT_ALGORITHMS: frozenset[str] = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"ES256", "ES384", "ES512", "EdDSA"}
)

# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_TOKEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")

#: Owner of server.auth.token (principal `token:server`): reserved, no listed or issued id may take it.
SERVER_OWNER = "server"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _check_non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _check_prefix(value: str) -> str:
    if value and not VISIBLE_ASCII.fullmatch(value):
        raise ValueError("must be printable ASCII without spaces (e.g. Bearer), or empty for a bare token")
    return value


def _check_jwt_algorithm(value: str) -> str:
    if value.strip().lower() == "none":
        raise ValueError("algorithm 'none' is never accepted: it means an unsigned token")
    if value not in JWT_ALGORITHMS:
        raise ValueError(f"unknown algorithm {value!r} (expected one of {', '.join(sorted(JWT_ALGORITHMS))})")
    return value


def _normalize_audience(value: object) -> object:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError("must be a string or a non-empty list of strings")
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise ValueError("must be a string or a non-empty list of strings")
    return value if isinstance(value, str) else tuple(items)


def _normalize_sha256(value: object) -> object:
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if not _SHA256_HEX.fullmatch(text):
        raise ValueError("must be 64 hexadecimal characters (the SHA-256 of the token)")
    return text


def _date_to_datetime(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def _assume_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _check_token_id(value: str) -> str:
    # Principal ids are `token:{id}`; without ':' in an id, none can pose as `token:mcp:{mcp id}`.
    if not _TOKEN_ID.fullmatch(value):
        raise ValueError(f"invalid token id {value!r}: use up to 128 of A-Z, a-z, 0-9, '_', '.', '@', '-'")
    if value == SERVER_OWNER:
        raise ValueError(f"token id {value!r} is reserved: token:server is the principal of server.auth.token")
    return value


def _check_scope(value: str) -> str:
    if not VISIBLE_ASCII.fullmatch(value) or '"' in value or "\\" in value:
        raise ValueError(f"{value!r} is not a valid OAuth scope")
    return value


def sha256_hex(secret: SecretStr) -> str:
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()


class TokenEntry(Model):
    """One static client token: its plaintext or its SHA-256, with roles, expiry and MCP scope."""

    id: Annotated[str, AfterValidator(_check_token_id)]
    token: TokenSecret | None = None
    sha256: Annotated[str | None, BeforeValidator(_normalize_sha256)] = None
    roles: tuple[NonEmptyStr, ...] = ()
    expires_at: Annotated[datetime | None, BeforeValidator(_date_to_datetime), AfterValidator(_assume_utc)] = None
    mcps: tuple[McpId, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.token is None) == (self.sha256 is None):
            raise LocatedError(("token",), "set exactly one of token and sha256")
        return self

    def digest(self) -> str:
        """The SHA-256 (hex) of this token, whether configured as plaintext or as a hash."""
        if self.sha256 is not None:
            return self.sha256
        assert self.token is not None
        return sha256_hex(self.token)


class JwtConfig(Model):
    """How a JWT bearer token is verified: one key source, an algorithm allowlist, claims."""

    FILES: ClassVar[tuple[str, ...]] = ("public_key_file",)

    secret: Annotated[SecretStr, AfterValidator(_check_non_empty_secret)] | None = None
    public_key_file: NonEmptyStr | None = None
    jwks_url: HttpUrl | None = None
    issuer: NonEmptyStr | None = None
    audience: Annotated[str | tuple[str, ...] | None, BeforeValidator(_normalize_audience)] = None
    algorithms: tuple[Annotated[str, AfterValidator(_check_jwt_algorithm)], ...]
    required_claims: dict[str, Any] = Field(default_factory=dict)
    leeway: Duration = 60.0
    jwks_cache_ttl: Duration = 300.0
    jwks_refresh_cooldown: Duration = 30.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.algorithms:
            raise LocatedError(("algorithms",), "list at least one algorithm, e.g. [RS256]")
        hmac_algs = [alg for alg in self.algorithms if alg.startswith("HS")]
        other_algs = [alg for alg in self.algorithms if not alg.startswith("HS")]
        if hmac_algs and other_algs:
            raise LocatedError(
                ("algorithms",),
                f"{hmac_algs[0]} cannot be mixed with {other_algs[0]} (key confusion: a public key "
                "would become an HMAC secret); use one family",
            )
        if hmac_algs:
            self._check_hmac_key(hmac_algs)
        else:
            self._check_public_key(other_algs[0])
        return self

    def _check_hmac_key(self, algorithms: list[str]) -> None:
        if self.public_key_file is not None or self.jwks_url is not None:
            raise LocatedError(("secret",), f"{algorithms[0]} uses secret, not public_key_file or jwks_url")
        if self.secret is None:
            raise LocatedError(("secret",), f"required for {algorithms[0]}")
        length = len(self.secret.get_secret_value().encode())
        for alg in algorithms:
            if length < _HMAC_MIN_KEY_BYTES[alg]:
                raise LocatedError(
                    ("secret",),
                    f"too short for {alg}: RFC 7518 §3.2 requires at least {_HMAC_MIN_KEY_BYTES[alg]} bytes",
                )

    def _check_public_key(self, algorithm: str) -> None:
        if self.secret is not None:
            raise LocatedError(("secret",), f"only for HS* algorithms; {algorithm} needs public_key_file or jwks_url")
        if (self.public_key_file is None) == (self.jwks_url is None):
            raise LocatedError(("public_key_file",), f"set exactly one of public_key_file and jwks_url for {algorithm}")


class IntrospectionConfig(Model):
    """RFC 7662: ask the authorization server whether a token is active (instead of verifying it here)."""

    url: HttpUrl
    client_id: NonEmptyStr
    client_secret: Annotated[SecretStr, AfterValidator(_check_non_empty_secret)]
    #: An active verdict is kept until the token's `exp`, and never longer than this.
    cache_ttl: PositiveDuration = 300.0
    #: An inactive verdict is kept this long, so one refused token replayed in a flood costs one call.
    inactive_cache_ttl: Duration = 10.0
    cache_size: PositiveInt = 10_000
    timeout: PositiveDuration = 5.0


#: Algorithms accepted from a discovered JWKS unless `oauth2.algorithms` says otherwise (public-key only).
OAUTH2_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


class OAuth2Config(Model):
    """OAuth 2.1 resource server: the issuer, this resource's audience and scopes, and RFC 9728 metadata.

    Tokens are verified by `jwt` when that block is set, else by RFC 7662 `introspection`, else as
    JWTs signed by the keys the issuer's RFC 8414 / OIDC metadata names (`jwks_uri`).
    """

    issuer: HttpUrl | None = None
    audience: Annotated[str | tuple[str, ...] | None, BeforeValidator(_normalize_audience)] = None
    required_scopes: tuple[Annotated[str, AfterValidator(_check_scope)], ...] = ()
    introspection: IntrospectionConfig | None = None
    algorithms: tuple[Annotated[str, AfterValidator(_check_jwt_algorithm)], ...] = OAUTH2_ALGORITHMS
    leeway: Duration = 60.0
    jwks_cache_ttl: Duration = 300.0
    jwks_refresh_cooldown: Duration = 30.0
    authorization_servers: tuple[HttpUrl, ...] = ()
    scopes_supported: tuple[Annotated[str, AfterValidator(_check_scope)], ...] = ()
    resource: HttpUrl | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.authorization_servers and self.issuer is None:
            if "authorization_servers" in self.model_fields_set:
                raise LocatedError(("authorization_servers",), "list at least one authorization server URL")
            raise LocatedError(("issuer",), "required: the authorization server that issues tokens for this MCP")
        if not self.algorithms:
            raise LocatedError(("algorithms",), "list at least one algorithm, e.g. [RS256]")
        for index, alg in enumerate(self.algorithms):
            if alg.startswith("HS"):
                raise LocatedError(("algorithms", index), f"{alg} needs a shared secret: use the jwt block for it")
        return self

    def servers(self) -> tuple[str, ...]:
        """The authorization servers the RFC 9728 metadata names: the configured list, else the issuer."""
        if self.authorization_servers:
            return self.authorization_servers
        return (self.issuer,) if self.issuer is not None else ()


class MtlsConfig(Model):
    """The verified client certificate (server.tls.client_auth) as the principal `mtls:{identity}`."""

    identity: Literal["subject_cn", "san_uri", "san_dns"]


class AuthConfig(Model):
    """What a client must present to reach an MCP (`mcps[].auth`, default `server.auth`)."""

    type: Literal["token", "jwt", "oauth2", "mtls", "none"]
    token: TokenSecret | None = None
    tokens: tuple[TokenEntry, ...] = ()
    header: Annotated[str, AfterValidator(check_header_name)] = "Authorization"
    prefix: Annotated[str, AfterValidator(_check_prefix)] = "Bearer"
    jwt: JwtConfig | None = None
    oauth2: OAuth2Config | None = None
    mtls: MtlsConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        self._check_keys_for_type()
        self._check_unique_tokens()
        return self

    def _check_keys_for_type(self) -> None:
        wanted = {
            "token": ("token", "tokens"),
            "jwt": ("jwt",),
            "oauth2": ("jwt", "oauth2"),
            "mtls": ("mtls",),
            "none": (),
        }[self.type]
        present = [name for name in ("token", "tokens", "jwt", "oauth2", "mtls") if getattr(self, name)]
        for name in present:
            if name not in wanted:
                raise LocatedError((name,), f"not used with type {self.type}; remove it")
        if self.type == "token" and not present:
            raise LocatedError(("token",), "type token needs token or tokens")
        if self.type == "jwt" and self.jwt is None:
            raise LocatedError(("jwt",), "required for type jwt")
        if self.type == "mtls" and self.mtls is None:
            raise LocatedError(("mtls",), "required for type mtls")
        if self.type == "oauth2":
            self._check_oauth2()

    def _check_oauth2(self) -> None:
        oauth2 = self.oauth2
        if oauth2 is None:
            raise LocatedError(("oauth2",), "required for type oauth2")
        if self.jwt is not None:
            if oauth2.introspection is not None:
                raise LocatedError(("oauth2", "introspection"), "set either jwt or oauth2.introspection, not both")
            if oauth2.audience is not None:
                raise LocatedError(("oauth2", "audience"), "with a jwt block, set the audience there (jwt.audience)")
            for name in ("algorithms", "leeway", "jwks_cache_ttl", "jwks_refresh_cooldown"):
                # A default written out (e.g. by `config check`, which dumps them all) changes nothing.
                if getattr(oauth2, name) != OAuth2Config.model_fields[name].default:
                    raise LocatedError(("oauth2", name), f"with a jwt block, set it there (jwt.{name})")
        elif oauth2.introspection is None and oauth2.issuer is None:
            raise LocatedError(("oauth2", "issuer"), "required to find the signing keys (or set jwt or introspection)")

    def _check_unique_tokens(self) -> None:
        seen_ids: dict[str, int] = {}
        seen_digests: dict[str, str] = {}
        if self.token is not None:
            seen_digests[sha256_hex(self.token)] = "'token'"
        for index, entry in enumerate(self.tokens):
            if entry.id in seen_ids:
                raise LocatedError(
                    ("tokens", index, "id"), f"duplicate token id {entry.id!r} (also tokens[{seen_ids[entry.id]}])"
                )
            seen_ids[entry.id] = index
            digest = entry.digest()
            if digest in seen_digests:
                raise LocatedError(("tokens", index), f"same token value as {seen_digests[digest]}")
            seen_digests[digest] = f"tokens[{index}]"

    def client_token_digests(self) -> Iterator[str]:
        """SHA-256 digests of every static token this block accepts."""
        if self.token is not None:
            yield sha256_hex(self.token)
        for entry in self.tokens:
            yield entry.digest()
