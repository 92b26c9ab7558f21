"""The config file: its schema (frozen pydantic models) and its loading.

`load_config()` reads one YAML or JSON file, expands `{{ .env.NAME }}` / `${NAME}` templates in
every string value, accepts Compozy's `mcps:` list and Claude-style `mcpServers`, and returns a
validated `ProxyConfig`, after reading every file it names. Problems surface as one `ConfigError`
listing each of them with the key path the user wrote (`mcps[0].security.rate_limit.burst_size`),
never a pydantic dump.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import shlex
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mcp_barbican._templating import expand_tree
from mcp_barbican._units import format_duration, parse_duration, parse_size
from mcp_barbican.exceptions import ConfigError

__all__ = [
    "CONFIG_FILE_NAMES",
    "JWT_ALGORITHMS",
    "MASK",
    "REDIS_UNAVAILABLE",
    "TLS12_IANA_TO_OPENSSL",
    "TLS13_SUITES",
    "AdminConfig",
    "AuditConfig",
    "AuditSink",
    "AuthConfig",
    "BanConfig",
    "CorsConfig",
    "FileSink",
    "HeadersConfig",
    "JwtConfig",
    "LimitsConfig",
    "McpConfig",
    "MetricsConfig",
    "OAuth2Config",
    "ProxyConfig",
    "RateLimitConfig",
    "SecurityConfig",
    "ServerConfig",
    "ServerTLSConfig",
    "SqliteSink",
    "StdoutSink",
    "StorageConfig",
    "SyslogSink",
    "TokenEntry",
    "ToolFilter",
    "UpstreamTLSConfig",
    "UPSTREAM_PROTOCOL_VERSIONS",
    "check_bind",
    "check_files",
    "config_schema",
    "find_config",
    "format_path",
    "load_config",
    "load_environ",
    "masked_dump",
    "masked_mcp",
    "validate_model",
]

logger = logging.getLogger(__name__)

#: Looked for in this order in the working directory when no `-c FILE` is given.
CONFIG_FILE_NAMES: tuple[str, ...] = ("mcp-barbican.yaml", "mcp-barbican.yml", "compozy.yaml")
_COMPOZY_FILE_NAME = "compozy.yaml"

#: What `masked_dump()` shows instead of a secret.
MASK = "********"

#: TLS 1.2 cipher suites accepted by IANA name, with the OpenSSL name `ssl.set_ciphers()` takes.
TLS12_IANA_TO_OPENSSL: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "DHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384": "ECDHE-ECDSA-AES256-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384": "ECDHE-RSA-AES256-SHA384",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256": "DHE-RSA-AES128-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256": "DHE-RSA-AES256-SHA256",
}

#: TLS 1.3 suite names accepted (OpenSSL chooses among them; Python's ssl cannot restrict them).
TLS13_SUITES: frozenset[str] = frozenset(
    {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    }
)

#: JWS algorithms a JWT may be configured to accept ("none" never is).
JWT_ALGORITHMS: frozenset[str] = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"ES256", "ES384", "ES512", "EdDSA"}
)
# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

_MCP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MCP_ID_RULE = "use 1-64 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"
_TOKEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
#: Owner of server.auth.token (principal `token:server`): reserved, no listed or issued id may take it.
SERVER_OWNER = "server"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOST_LABELS = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
# The proxy owns framing and the MCP session headers of the upstream connection.
_FORBIDDEN_UPSTREAM_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "proxy-connection"}
    | {"te", "trailer", "upgrade", "mcp-session-id", "mcp-protocol-version"}
)
_SYSLOG_FACILITIES = frozenset(
    {"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp"}
    | {f"local{n}" for n in range(8)}
)
#: Protocol versions the proxy can offer an upstream in its own `initialize` (`mcps[].proto`).
UPSTREAM_PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
#: Why `storage.type: redis` is refused, by `config check` and `serve` alike.
REDIS_UNAVAILABLE = "storage type redis is not available in this build yet; use sqlite (the default) or memory"
_DEFAULT_MAX_SESSIONS = 100
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


class _LocatedError(ValueError):
    """A model-level check that knows which key below the model is wrong."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


# ---------------------------------------------------------------------------------------------
# Value checks used as Annotated validators


def _no_bool(value: object) -> object:
    # YAML turns `yes`/`on` into True; an integer setting should not silently become 1.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _scalar_to_str(value: object) -> object:
    # `PORT: 8080` in an env block means the string "8080", as a shell would see it.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


def _no_control_chars(value: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL characters")
    return value


def _check_ip_or_network(value: str) -> str:
    text = value.strip()
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.5, ::1)") from None
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_hostname(host: str, original: str) -> None:
    if not (_is_ip(host) or _HOST_LABELS.fullmatch(host)):
        raise ValueError(f"{original!r} is not a valid host name or IP address")


def _split_host_port(text: str, original: str) -> tuple[str, str]:
    """Split `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address has no port."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not _is_ip(host) or (rest and not rest.startswith(":")):
            raise ValueError(f"{original!r} is not a valid host[:port]")
        return f"[{host}]", rest[1:]
    if text.count(":") > 1:
        return text, ""
    host, _, port = text.partition(":")
    return host, port


def _check_port_text(port: str, original: str) -> None:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{original!r} has an invalid port (1-65535)")


def _check_allowed_host(value: str) -> str:
    text = value.strip().lower()
    if not text or "/" in text or "@" in text:
        raise ValueError(f"{value!r} is not a host or host:port (no scheme, no path)")
    host, port = _split_host_port(text, value)
    if port or text.endswith(":"):
        _check_port_text(port, value)
    bare = host.strip("[]")
    _check_hostname(bare, value)
    if ":" in bare and not host.startswith("["):
        host = f"[{bare}]"
    return f"{host}:{port}" if port else host


def _check_bind_host(value: str) -> str:
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("must not be empty (use 0.0.0.0 or :: for every interface)")
    _check_hostname(text.lower(), value)
    return text


def _check_http_url(value: str) -> str:
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not allowed; send them in headers")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return text


def _check_mcp_id(value: str) -> str:
    if not _MCP_ID.fullmatch(value):
        raise ValueError(f"invalid id {value!r}: {_MCP_ID_RULE}")
    # The aggregated /mcp endpoint names tools `{id}__{tool}`; "__" in an id would be ambiguous.
    if "__" in value:
        raise ValueError(f"invalid id {value!r}: '__' is reserved as the separator of aggregated tool names")
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def _check_upstream_header_name(value: str) -> str:
    _check_header_name(value)
    if value.lower() in _FORBIDDEN_UPSTREAM_HEADERS:
        raise ValueError(f"header {value!r} is set by the proxy and cannot be configured")
    return value


def _check_token_secret(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    if not secret:
        raise ValueError("must not be empty")
    if not _VISIBLE_ASCII.fullmatch(secret):
        raise ValueError("must be printable ASCII without spaces (it travels in an HTTP header)")
    return value


def _check_non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _check_prefix(value: str) -> str:
    if value and not _VISIBLE_ASCII.fullmatch(value):
        raise ValueError("must be printable ASCII without spaces (e.g. Bearer), or empty for a bare token")
    return value


def _check_cipher_suite(value: str) -> str:
    name = value.strip()
    if name in TLS13_SUITES or name in TLS12_IANA_TO_OPENSSL:
        return name
    for iana, openssl in TLS12_IANA_TO_OPENSSL.items():
        if openssl == name:
            raise ValueError(f"cipher suite {name!r} is an OpenSSL name; use the IANA name {iana}")
    raise ValueError(
        f"unknown or insecure cipher suite {name!r}: use IANA names such as "
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (TLS 1.2) or TLS_AES_128_GCM_SHA256 (TLS 1.3)"
    )


def _normalize_tls_version(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value
    text = str(value).strip().lower().removeprefix("tlsv").removeprefix("tls").strip()
    if text in ("1", "1.0", "1.1"):
        raise ValueError(f"TLS {value} is not allowed: TLS 1.0 and 1.1 are deprecated by RFC 8996; use 1.2 or 1.3")
    return text


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


def _date_to_text(value: object) -> object:
    # YAML reads an unquoted 2025-06-18 as a date.
    return value.isoformat() if isinstance(value, date) and not isinstance(value, datetime) else value


def _check_proto(value: str) -> str:
    if value not in UPSTREAM_PROTOCOL_VERSIONS:
        raise ValueError(
            f"unsupported protocol version {value!r} (expected one of {', '.join(UPSTREAM_PROTOCOL_VERSIONS)})"
        )
    return value


def _check_token_id(value: str) -> str:
    # Principal ids are `token:{id}`; without ':' in an id, none can pose as `token:mcp:{mcp id}`.
    if not _TOKEN_ID.fullmatch(value):
        raise ValueError(f"invalid token id {value!r}: use up to 128 of A-Z, a-z, 0-9, '_', '.', '@', '-'")
    if value == SERVER_OWNER:
        raise ValueError(f"token id {value!r} is reserved: token:server is the principal of server.auth.token")
    return value


def _check_scope(value: str) -> str:
    if not _VISIBLE_ASCII.fullmatch(value) or '"' in value or "\\" in value:
        raise ValueError(f"{value!r} is not a valid OAuth scope")
    return value


def _check_method(value: str) -> str:
    method = value.strip().upper()
    if not _HEADER_NAME.fullmatch(method):
        raise ValueError(f"{value!r} is not a valid HTTP method")
    return method


def _normalize_origin(value: str) -> str:
    text = value.strip()
    if text == "*":
        return text
    if text.lower() == "null":
        raise ValueError("'null' is not a trustworthy origin (sandboxed iframes and file: pages send it)")
    if "://" not in text:
        if not text.startswith("*."):
            raise ValueError(f"origin {value!r} must be scheme://host[:port], e.g. https://app.example.com")
        text = f"https://{text}"  # the seed's bare "*.example.com" form; browsers' secure default
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        raise ValueError(f"origin {value!r} has an invalid scheme")
    if not rest or any(char in rest for char in "/?#@ "):
        raise ValueError(f"origin {value!r} must be scheme://host[:port] with no path or trailing slash")
    host, port = _split_host_port(rest.lower(), value)
    return _join_origin(scheme, _check_origin_host(host, value), port, value)


def _check_origin_host(host: str, original: str) -> str:
    labels = host.removeprefix("*.")
    if "*" in labels:
        raise ValueError(f"origin {original!r}: a wildcard may only be the whole leftmost label (*.example.com)")
    if host.startswith("*.") and "." not in labels.rstrip("."):
        raise ValueError(f"origin {original!r}: a wildcard needs a domain of at least two labels")
    _check_hostname(labels.strip("[]"), original)
    return host


def _join_origin(scheme: str, host: str, port: str, original: str) -> str:
    if not port:
        return f"{scheme}://{host}"
    _check_port_text(port, original)
    # Browsers omit the default port from Origin, so a configured one would never match.
    if _DEFAULT_PORTS.get(scheme) == str(int(port)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def _check_syslog_address(value: str) -> str:
    text = value.strip()
    if text.startswith("/"):
        return text
    host, port = _split_host_port(text.lower(), value)
    if port or text.endswith(":"):
        _check_port_text(port, value)
    _check_hostname(host.strip("[]"), value)
    return text


# ---------------------------------------------------------------------------------------------
# Reusable field types

_DURATION_INPUT = BeforeValidator(parse_duration, json_schema_input_type=float | str)
Duration = Annotated[float, _DURATION_INPUT, Field(json_schema_extra={"format": "duration"})]
PositiveDuration = Annotated[
    float, _DURATION_INPUT, AfterValidator(_positive), Field(json_schema_extra={"format": "duration"})
]
Size = Annotated[
    int,
    BeforeValidator(parse_size, json_schema_input_type=int | str),
    AfterValidator(_positive),
    Field(json_schema_extra={"format": "size"}),
]
PositiveInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]
NonNegativeInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=0)]
Port = Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=65535)]
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
IpOrNetwork = Annotated[str, AfterValidator(_check_ip_or_network)]
CipherSuite = Annotated[str, AfterValidator(_check_cipher_suite)]
TlsVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_normalize_tls_version)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
HeaderValue = Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_no_control_chars)]
TokenSecret = Annotated[SecretStr, AfterValidator(_check_token_secret)]
McpId = Annotated[str, AfterValidator(_check_mcp_id)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# TLS


class ServerTLSConfig(_Model):
    """TLS of the proxy's own listener (`server.tls`)."""

    #: Fields naming files read at load (`check_files`).
    FILES: ClassVar[tuple[str, ...]] = ("cert_file", "key_file", "ca_file")

    enabled: bool = True
    cert_file: NonEmptyStr | None = None
    key_file: NonEmptyStr | None = None
    ca_file: NonEmptyStr | None = None
    client_auth: Literal["none", "optional", "required"] = "none"
    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    cipher_suites: tuple[CipherSuite, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.enabled and self.cert_file is None:
            raise _LocatedError(("cert_file",), "required when TLS is enabled")
        if self.enabled and self.key_file is None:
            raise _LocatedError(("key_file",), "required when TLS is enabled")
        if self.client_auth != "none" and self.ca_file is None:
            raise _LocatedError(("ca_file",), f"required with client_auth: {self.client_auth} (trust roots of clients)")
        _check_version_order(self.min_version, self.max_version)
        return self


class UpstreamTLSConfig(_Model):
    """TLS of the connection to one upstream (`mcps[].tls`)."""

    FILES: ClassVar[tuple[str, ...]] = ("ca_file", "cert_file", "key_file")

    enabled: bool = True
    ca_file: NonEmptyStr | None = None
    cert_file: NonEmptyStr | None = None
    key_file: NonEmptyStr | None = None
    insecure_skip_verify: bool = False
    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    cipher_suites: tuple[CipherSuite, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.cert_file is not None and self.key_file is None:
            raise _LocatedError(("key_file",), "required with cert_file (client certificate for upstream mTLS)")
        if self.key_file is not None and self.cert_file is None:
            raise _LocatedError(("cert_file",), "required with key_file (client certificate for upstream mTLS)")
        _check_version_order(self.min_version, self.max_version)
        return self


def _sha256_hex(secret: SecretStr) -> str:
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()


def _check_version_order(min_version: str, max_version: str) -> None:
    if min_version > max_version:
        raise _LocatedError(("max_version",), f"{max_version} is below min_version {min_version}")


# ---------------------------------------------------------------------------------------------
# Authentication


class TokenEntry(_Model):
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
            raise _LocatedError(("token",), "set exactly one of token and sha256")
        return self

    def digest(self) -> str:
        """The SHA-256 (hex) of this token, whether configured as plaintext or as a hash."""
        if self.sha256 is not None:
            return self.sha256
        assert self.token is not None
        return _sha256_hex(self.token)


class JwtConfig(_Model):
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
            raise _LocatedError(("algorithms",), "list at least one algorithm, e.g. [RS256]")
        hmac_algs = [alg for alg in self.algorithms if alg.startswith("HS")]
        other_algs = [alg for alg in self.algorithms if not alg.startswith("HS")]
        if hmac_algs and other_algs:
            raise _LocatedError(
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
            raise _LocatedError(("secret",), f"{algorithms[0]} uses secret, not public_key_file or jwks_url")
        if self.secret is None:
            raise _LocatedError(("secret",), f"required for {algorithms[0]}")
        length = len(self.secret.get_secret_value().encode())
        for alg in algorithms:
            if length < _HMAC_MIN_KEY_BYTES[alg]:
                raise _LocatedError(
                    ("secret",),
                    f"too short for {alg}: RFC 7518 §3.2 requires at least {_HMAC_MIN_KEY_BYTES[alg]} bytes",
                )

    def _check_public_key(self, algorithm: str) -> None:
        if self.secret is not None:
            raise _LocatedError(("secret",), f"only for HS* algorithms; {algorithm} needs public_key_file or jwks_url")
        if (self.public_key_file is None) == (self.jwks_url is None):
            raise _LocatedError(
                ("public_key_file",), f"set exactly one of public_key_file and jwks_url for {algorithm}"
            )


class OAuth2Config(_Model):
    """OAuth 2.1 resource-server metadata (RFC 9728) served for this MCP."""

    authorization_servers: tuple[HttpUrl, ...]
    scopes_supported: tuple[Annotated[str, AfterValidator(_check_scope)], ...] = ()
    resource: HttpUrl | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.authorization_servers:
            raise _LocatedError(("authorization_servers",), "list at least one authorization server URL")
        return self


class AuthConfig(_Model):
    """What a client must present to reach an MCP (`mcps[].auth`, default `server.auth`)."""

    type: Literal["token", "jwt", "oauth2", "none"]
    token: TokenSecret | None = None
    tokens: tuple[TokenEntry, ...] = ()
    header: Annotated[str, AfterValidator(_check_header_name)] = "Authorization"
    prefix: Annotated[str, AfterValidator(_check_prefix)] = "Bearer"
    jwt: JwtConfig | None = None
    oauth2: OAuth2Config | None = None

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
            "none": (),
        }[self.type]
        present = [name for name in ("token", "tokens", "jwt", "oauth2") if getattr(self, name)]
        for name in present:
            if name not in wanted:
                raise _LocatedError((name,), f"not used with type {self.type}; remove it")
        if self.type == "token" and not present:
            raise _LocatedError(("token",), "type token needs token or tokens")
        for name in ("jwt", "oauth2"):
            if name in wanted and name not in present:
                raise _LocatedError((name,), f"required for type {self.type}")

    def _check_unique_tokens(self) -> None:
        seen_ids: dict[str, int] = {}
        seen_digests: dict[str, str] = {}
        if self.token is not None:
            seen_digests[_sha256_hex(self.token)] = "'token'"
        for index, entry in enumerate(self.tokens):
            if entry.id in seen_ids:
                raise _LocatedError(
                    ("tokens", index, "id"), f"duplicate token id {entry.id!r} (also tokens[{seen_ids[entry.id]}])"
                )
            seen_ids[entry.id] = index
            digest = entry.digest()
            if digest in seen_digests:
                raise _LocatedError(("tokens", index), f"same token value as {seen_digests[digest]}")
            seen_digests[digest] = f"tokens[{index}]"

    def client_token_digests(self) -> Iterator[str]:
        """SHA-256 digests of every static token this block accepts."""
        if self.token is not None:
            yield _sha256_hex(self.token)
        for entry in self.tokens:
            yield entry.digest()


# ---------------------------------------------------------------------------------------------
# Security


class RateLimitConfig(_Model):
    """Token-bucket limits; a burst is the bucket size of the per-minute rate beside it."""

    requests_per_minute: PositiveInt | None = None
    requests_per_hour: PositiveInt | None = None
    requests_per_day: PositiveInt | None = None
    burst_size: PositiveInt | None = None
    per_ip_requests_per_minute: PositiveInt | None = None
    per_ip_burst_size: PositiveInt | None = None
    per_token_requests_per_minute: PositiveInt | None = None
    per_token_burst_size: PositiveInt | None = None
    per_mcp_requests_per_minute: PositiveInt | None = None
    per_mcp_burst_size: PositiveInt | None = None

    _BURST_RATES: ClassVar[dict[str, str]] = {
        "burst_size": "requests_per_minute",
        "per_ip_burst_size": "per_ip_requests_per_minute",
        "per_token_burst_size": "per_token_requests_per_minute",
        "per_mcp_burst_size": "per_mcp_requests_per_minute",
    }

    @model_validator(mode="after")
    def _check(self) -> Self:
        for burst, rate in self._BURST_RATES.items():
            if getattr(self, burst) is not None and getattr(self, rate) is None:
                raise _LocatedError((burst,), f"needs {rate} (a burst is the bucket size of that rate)")
        return self


class CorsConfig(_Model):
    """CORS policy; origins are normalized to lowercase `scheme://host[:port]`."""

    enabled: bool = True
    allowed_origins: tuple[Annotated[str, AfterValidator(_normalize_origin)], ...] = ()
    allowed_methods: tuple[Annotated[str, AfterValidator(_check_method)], ...] = ("GET", "POST", "DELETE", "OPTIONS")
    allowed_headers: tuple[Annotated[str, AfterValidator(_check_header_name)], ...] = (
        "Content-Type",
        "Authorization",
        "Mcp-Session-Id",
        "MCP-Protocol-Version",
        "Last-Event-ID",
    )
    exposed_headers: tuple[Annotated[str, AfterValidator(_check_header_name)], ...] = ("Mcp-Session-Id",)
    allow_credentials: bool = False
    max_age: Duration = 600.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.allow_credentials and "*" in self.allowed_origins:
            raise _LocatedError(
                ("allowed_origins", self.allowed_origins.index("*")),
                "'*' cannot be combined with allow_credentials: true; list the origins instead",
            )
        return self


class HeadersConfig(_Model):
    """Security headers added to every response; an empty value omits that header."""

    enabled: bool = True
    csp: str = "default-src 'none'; frame-ancestors 'none'"
    hsts_max_age: Duration = 31536000.0
    x_frame_options: str = "DENY"
    referrer_policy: str = "no-referrer"
    permissions_policy: str = "camera=(), microphone=(), geolocation=()"
    cache_control: str = "no-store"

    @field_validator("csp", "x_frame_options", "referrer_policy", "permissions_policy", "cache_control")
    @classmethod
    def _check_value(cls, value: str) -> str:
        return _no_control_chars(value)


class LimitsConfig(_Model):
    """Request size limits (413 / 431 / 400 when exceeded)."""

    max_body_size: Size = 4 * 1024 * 1024
    max_header_size: Size = 16384
    max_json_depth: PositiveInt = 64
    max_string_length: Size | None = None


class BanConfig(_Model):
    """fail2ban-like ban of an address after repeated authentication failures."""

    enabled: bool = True
    max_failures: PositiveInt = 5
    find_time: PositiveDuration = 600.0
    ban_time: PositiveDuration = 600.0
    #: IPv6 addresses count per network of this prefix length (one host owns a /64), for bans and per-IP limits.
    ipv6_prefix: Annotated[int, Field(ge=1, le=128)] = 64
    #: Addresses whose failures never ban (fail2ban's ignoreip).
    ignore: tuple[IpOrNetwork, ...] = ("127.0.0.1", "::1")


class SecurityConfig(_Model):
    """Network-level protections of one MCP (or the server default)."""

    ip_whitelist: tuple[IpOrNetwork, ...] = ()
    ip_blacklist: tuple[IpOrNetwork, ...] = ()
    rate_limit: RateLimitConfig | None = None
    cors: CorsConfig | None = None
    headers: HeadersConfig = HeadersConfig()
    limits: LimitsConfig = LimitsConfig()
    auth_failure_ban: BanConfig = BanConfig()


# ---------------------------------------------------------------------------------------------
# Storage and audit


class StorageConfig(_Model):
    """Where state (buckets, bans, tokens, registry) lives."""

    type: Literal["memory", "sqlite", "redis"] = "sqlite"
    path: NonEmptyStr = ".mcp-barbican/state.db"
    url: SecretStr | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == "redis":
            raise _LocatedError(("type",), REDIS_UNAVAILABLE)
        if self.url is not None:
            raise _LocatedError(("url",), "only used with type redis")
        return self


class StdoutSink(_Model):
    """Audit events as JSON lines on stdout."""

    type: Literal["stdout"]


class FileSink(_Model):
    """Audit events as JSON lines in a size-rotated file."""

    type: Literal["file"]
    path: NonEmptyStr
    max_bytes: Size = 10 * 1024 * 1024
    backups: NonNegativeInt = 5


class SyslogSink(_Model):
    """Audit events to syslog (`host:port` over UDP, or a unix socket path)."""

    type: Literal["syslog"]
    address: Annotated[str, AfterValidator(_check_syslog_address)] = "localhost:514"
    facility: str = "auth"

    @field_validator("facility")
    @classmethod
    def _check_facility(cls, value: str) -> str:
        if value.lower() not in _SYSLOG_FACILITIES:
            raise ValueError(f"unknown facility {value!r} (expected one of {', '.join(sorted(_SYSLOG_FACILITIES))})")
        return value.lower()


class SqliteSink(_Model):
    """Audit events in SQLite (queryable through /admin/audit); path None means the default."""

    type: Literal["sqlite"]
    path: NonEmptyStr | None = None


AuditSink = Annotated[StdoutSink | FileSink | SyslogSink | SqliteSink, Field(discriminator="type")]


class AuditConfig(_Model):
    """The audit trail: sinks, argument handling and queue size."""

    sinks: tuple[AuditSink, ...] = ()
    arguments: Literal["redact", "hash", "keep"] = "redact"
    queue_size: PositiveInt = 10000


# ---------------------------------------------------------------------------------------------
# Server


class AdminConfig(_Model):
    """The admin API's credentials and address allowlist."""

    token: TokenSecret | None = None
    tokens: tuple[TokenSecret, ...] = ()
    ip_whitelist: tuple[IpOrNetwork, ...] = ("127.0.0.1", "::1")
    port: Port | None = None
    allow_stdio: bool = True


class ListenerLimits(_Model):
    """What one client may hold of the listener before it is authenticated (`server.limits`)."""

    max_header_bytes: Size = 16384
    max_headers: PositiveInt = 100
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 30.0
    max_connections: PositiveInt = 1000
    max_sessions_per_principal: PositiveInt = 20
    init_timeout: PositiveDuration = 10.0


class MetricsConfig(_Model):
    """`public: true` serves /metrics without the admin token."""

    public: bool = False


class ServerConfig(_Model):
    """The proxy's own listener and the defaults every MCP inherits."""

    host: Annotated[str, AfterValidator(_check_bind_host)] = "127.0.0.1"
    port: Port = 6001
    admin: AdminConfig = AdminConfig()
    trusted_proxies: tuple[IpOrNetwork, ...] = ()
    tls: ServerTLSConfig | None = None
    auth: AuthConfig | None = None
    security: SecurityConfig = SecurityConfig()
    storage: StorageConfig = StorageConfig()
    audit: AuditConfig = AuditConfig()
    allowed_hosts: tuple[Annotated[str, AfterValidator(_check_allowed_host)], ...] = ()
    session_idle_timeout: PositiveDuration = 1800.0
    metrics: MetricsConfig = MetricsConfig()
    limits: ListenerLimits = ListenerLimits()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.admin.port is not None and self.admin.port == self.port:
            raise _LocatedError(("admin", "port"), f"must differ from server.port ({self.port}), or be left unset")
        return self


# ---------------------------------------------------------------------------------------------
# MCPs


class ToolFilter(_Model):
    """Which tools of an MCP are visible and callable (glob patterns)."""

    mode: Literal["allow", "block"]
    list: tuple[NonEmptyStr, ...]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.list:
            raise _LocatedError(("list",), "list at least one tool name or glob pattern")
        return self


class McpConfig(_Model):
    """One upstream MCP server and the policy in front of it."""

    id: McpId
    description: str = ""
    #: Compozy's resource name for this MCP: kept and shown, not used for routing (the id is).
    resource: NonEmptyStr | None = None
    transport: Literal["stdio", "sse", "streamable-http"]
    url: HttpUrl | None = None
    command: NonEmptyStr | None = None
    args: tuple[Annotated[str, BeforeValidator(_scalar_to_str)], ...] = ()
    env: dict[Annotated[str, AfterValidator(_check_env_name)], HeaderValue] = Field(default_factory=dict)
    cwd: NonEmptyStr | None = None
    headers: dict[Annotated[str, AfterValidator(_check_upstream_header_name)], HeaderValue] = Field(
        default_factory=dict
    )
    start_timeout: PositiveDuration = 30.0
    request_timeout: PositiveDuration = 300.0
    max_sessions: PositiveInt = _DEFAULT_MAX_SESSIONS
    #: The protocol version the proxy offers in its own `initialize` upstream (default: the newest it speaks).
    proto: Annotated[str, BeforeValidator(_date_to_text), AfterValidator(_check_proto)] | None = None
    session_mode: Literal["isolated", "shared"] = "isolated"
    required: bool = True
    tool_filter: ToolFilter | None = None
    auth: AuthConfig | None = None
    security: SecurityConfig | None = None
    tls: UpstreamTLSConfig | None = None

    #: Fields whose values `masked_dump()` hides (upstream API keys live there).
    SECRET_MAPS: ClassVar[frozenset[str]] = frozenset({"env", "headers"})

    @model_validator(mode="before")
    @classmethod
    def _default_transport(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = _split_command(data)
        if "transport" not in data:
            return {**data, "transport": "stdio" if data.get("command") is not None else "streamable-http"}
        return data

    @field_validator("max_sessions", mode="before")
    @classmethod
    def _compozy_unlimited(cls, value: object, info: ValidationInfo) -> object:
        if value == 0 and not isinstance(value, bool):
            logger.warning(
                'MCP %r: max_sessions: 0 (Compozy\'s "unlimited") is taken as the default cap of %d',
                info.data.get("id"),
                _DEFAULT_MAX_SESSIONS,
            )
            return _DEFAULT_MAX_SESSIONS
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.url is not None and self.command is not None:
            raise _LocatedError(
                (), "url and command are mutually exclusive (url for sse/streamable-http, command for stdio)"
            )
        if self.transport == "stdio":
            self._check_stdio()
        else:
            self._check_http()
        return self

    def _check_stdio(self) -> None:
        if self.command is None:
            raise _LocatedError(("command",), "required for transport stdio")
        for name in ("headers", "tls"):
            if getattr(self, name):
                raise _LocatedError((name,), "only used with transports sse and streamable-http")

    def _check_http(self) -> None:
        if self.url is None:
            raise _LocatedError(("url",), f"required for transport {self.transport}")
        for name in ("command", "args", "env", "cwd"):
            if getattr(self, name):
                raise _LocatedError((name,), "only used with transport stdio")
        if self.tls is not None and self.tls.enabled and urlsplit(self.url).scheme != "https":
            raise _LocatedError(
                ("tls",), "tls is enabled but url is not https://; use https:// or set tls.enabled: false"
            )


def _split_command(data: dict[str, Any]) -> dict[str, Any]:
    """Compozy's one-string `command: "npx -y server"`, split like a shell when `args` is absent."""
    command = data.get("command")
    if "args" in data or not isinstance(command, str) or not any(char in command for char in " \t\n'\""):
        return data
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise _LocatedError(("command",), f"cannot split {command!r} like a shell: {exc}") from None
    if not words:
        return data
    return {**data, "command": words[0], "args": words[1:]}


class ProxyConfig(_Model):
    """The whole validated config file."""

    server: ServerConfig = ServerConfig()
    mcps: tuple[McpConfig, ...]

    @model_validator(mode="after")
    def _check(self) -> Self:
        self._check_unique_ids()
        for index, mcp in enumerate(self.mcps):
            if mcp.auth is None and self.server.auth is None:
                raise _LocatedError(
                    ("mcps", index, "auth"),
                    f"no auth configured: set mcps[{index}].auth or server.auth (type: none must be explicit)",
                )
        self._check_admin_tokens_distinct()
        self._check_token_ids()
        return self

    def _check_unique_ids(self) -> None:
        seen: dict[str, int] = {}
        for index, mcp in enumerate(self.mcps):
            if mcp.id in seen:
                raise _LocatedError(("mcps", index, "id"), f"duplicate id {mcp.id!r} (also mcps[{seen[mcp.id]}])")
            seen[mcp.id] = index

    def _check_admin_tokens_distinct(self) -> None:
        auths = [self.server.auth, *(mcp.auth for mcp in self.mcps)]
        client = {digest for auth in auths if auth is not None for digest in auth.client_token_digests()}
        admin = self.server.admin
        candidates: list[tuple[Loc, SecretStr]] = [(("token",), admin.token)] if admin.token is not None else []
        candidates += [(("tokens", index), token) for index, token in enumerate(admin.tokens)]
        for loc, token in candidates:
            if _sha256_hex(token) in client:
                raise _LocatedError(("server", "admin", *loc), "must differ from every client token")

    def listed_tokens(self) -> Iterator[tuple[Loc, TokenEntry]]:
        """Every `auth.tokens` entry of the file, with its key path (server.auth's first)."""
        blocks: list[tuple[Loc, AuthConfig | None]] = [(("server", "auth"), self.server.auth)]
        blocks += [(("mcps", index, "auth"), mcp.auth) for index, mcp in enumerate(self.mcps)]
        for loc, auth in blocks:
            for index, entry in enumerate(auth.tokens if auth is not None else ()):
                yield (*loc, "tokens", index, "id"), entry

    def _check_token_ids(self) -> None:
        """One id names one credential across the file: principals `token:{id}` never collide."""
        seen: dict[str, tuple[Loc, str]] = {}
        for loc, entry in self.listed_tokens():
            first = seen.setdefault(entry.id, (loc, entry.digest()))
            if first[1] != entry.digest():
                raise _LocatedError(
                    loc,
                    f"token id {entry.id!r} is also {format_path(first[0])}, with another token: an id names one "
                    f"credential across the file (its principal is token:{entry.id})",
                )

    def effective_auth(self, mcp: McpConfig) -> AuthConfig:
        """The client authentication of `mcp`: its own `auth`, else `server.auth`."""
        auth = mcp.auth if mcp.auth is not None else self.server.auth
        if auth is None:
            # Only reachable for a model built without validation (model_construct / model_copy).
            raise ConfigError(f"no auth configured for MCP {mcp.id!r}: set its auth or server.auth", path="server.auth")
        return auth

    def effective_security(self, mcp: McpConfig) -> SecurityConfig:
        """The security block of `mcp`: its own `security`, else `server.security`.

        A per-MCP block replaces the server default as a whole; nothing is merged key by key,
        so an MCP that sets only `rate_limit` gets no IP lists from the server block.
        """
        return mcp.security if mcp.security is not None else self.server.security

    def mcp(self, mcp_id: str) -> McpConfig | None:
        """The MCP with this id, if any."""
        return next((mcp for mcp in self.mcps if mcp.id == mcp_id), None)


# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into ConfigError


def validate_model(model: type[ModelT], data: object, *, prefix: Loc = ()) -> ModelT:
    """Validate `data` as `model`; raise ConfigError naming every error's key path (below `prefix`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _errors(model, exc)
    raise _config_error([(prefix + loc, message) for loc, message in problems])


def _config_error(problems: list[tuple[Loc, str]]) -> ConfigError:
    """One ConfigError carrying every problem, the first one's path as its own."""
    (loc, message), *others = problems
    return ConfigError(message, path=format_path(loc), also=[ConfigError(m, path=format_path(lc)) for lc, m in others])


def _errors(model: type[BaseModel], exc: ValidationError) -> list[tuple[Loc, str]]:
    """The user's key path and a short message for each error (one per key path)."""
    problems: dict[Loc, str] = {}
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _LocatedError):
            loc += cause.loc
        steps = _walk(model, loc)
        message = _message(error, steps[-1][1] if steps else model)
        # A member of a tagged union without its tag: the missing key is the tag itself.
        missing_tag: Loc = ("type",) if error["type"] == "union_tag_not_found" else ()
        problems.setdefault(tuple(step for step, _ in steps) + missing_tag, message)
    return list(problems.items())


def _walk(root: type[BaseModel], loc: Loc) -> list[tuple[str | int, Any]]:
    """Keep the segments of a pydantic `loc` that the user wrote, each with its container type.

    Pydantic adds segments of its own: the tag of a discriminated union member and `[key]`
    for an invalid mapping key.
    """
    steps: list[tuple[str | int, Any]] = []
    current: Any = root
    for segment in loc:
        current = _strip_optional(current)
        if segment == "[key]":
            continue
        if _is_union(current):
            current = _union_member(current, segment)
            continue
        steps.append((segment, current))
        current = _child_type(current, segment)
    return steps


def _strip_optional(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif _is_union(tp) and len(members := [arg for arg in get_args(tp) if arg is not NoneType]) == 1:
            tp = members[0]
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, UnionType)


def _union_member(tp: Any, tag: str | int) -> Any:
    for member in get_args(tp):
        member = _strip_optional(member)
        if _is_model(member) and "type" in member.model_fields:
            if tag in get_args(member.model_fields["type"].annotation):
                return member
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _child_type(tp: Any, segment: str | int) -> Any:
    if _is_model(tp):
        field = tp.model_fields.get(segment) if isinstance(segment, str) else None
        return field.annotation if field is not None else None
    args = get_args(tp)
    if get_origin(tp) in (tuple, list) and args:
        return args[0]
    if get_origin(tp) is dict and len(args) == 2:
        return args[1]
    return None


def _message(error: Mapping[str, Any], container: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "missing" or kind == "union_tag_not_found":
        return "required key is missing"
    if kind == "extra_forbidden":
        if _is_model(container):
            return f"unknown key (expected one of: {', '.join(container.model_fields)})"
        return "unknown key"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "union_tag_invalid":
        return f"unknown type {ctx.get('tag')!r} (expected one of: {ctx.get('expected_tags')})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, not {_short_repr(error.get('input'))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping of keys to values"
    if kind in ("tuple_type", "list_type"):
        return "must be a list"
    text = str(error["msg"])
    return "must be " + text.removeprefix("Input should be ") if text.startswith("Input should be ") else text


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_path(loc: Loc) -> str:
    """Render a key path: ("mcps", 0, "auth") → "mcps[0].auth"."""
    text = ""
    for segment in loc:
        text += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if text else str(segment))
    return text


# ---------------------------------------------------------------------------------------------
# Files the config names


def check_files(model: BaseModel, *, prefix: Loc = ()) -> None:
    """Read every file `model` names (see `_file_problems`); ConfigError naming each one that fails."""
    problems = _file_problems(model, prefix)
    if problems:
        raise _config_error(problems)


def _file_problems(model: BaseModel, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every named file that cannot be read (or, for an audit file, written), with its key path.

    Relative paths are relative to the working directory, as everywhere else. TLS files must
    also load: PEM trust roots, and a certificate with its unencrypted key.
    """
    problems: list[tuple[Loc, str]] = []
    names: tuple[str, ...] = getattr(model, "FILES", ())
    for name in names:
        path = getattr(model, name)
        if path is not None and (problem := _unreadable(path)) is not None:
            problems.append(((*loc, name), problem))
    if isinstance(model, ServerTLSConfig | UpstreamTLSConfig) and model.enabled and not problems:
        problems += [((*loc, name), problem) for name, problem in _tls_problems(model)]
    if isinstance(model, JwtConfig) and model.public_key_file is not None and not problems:
        problems += [((*loc, "public_key_file"), problem) for problem in _jwt_key_problems(model)]
    if isinstance(model, FileSink) and (problem := _unwritable(model.path)) is not None:
        problems.append(((*loc, "path"), problem))
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            problems += _file_problems(value, (*loc, name))
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    problems += _file_problems(item, (*loc, name, index))
    return problems


def _unreadable(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _unwritable(path: str) -> str | None:
    target = Path(path)
    if target.exists():
        if target.is_dir():
            return f"cannot write {path}: Is a directory"
        return None if os.access(target, os.W_OK) else f"cannot write {path}: Permission denied"
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent  # the sink creates missing directories
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not a writable directory"
    return None


def _tls_problems(tls: ServerTLSConfig | UpstreamTLSConfig) -> Iterator[tuple[str, str]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except ssl.SSLError as exc:
            yield "ca_file", f"{tls.ca_file} holds no PEM certificate: {exc}"
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_password)
        except ssl.SSLError as exc:
            yield "cert_file", f"cannot load {tls.cert_file} with key {tls.key_file}: {exc}"


def _jwt_key_problems(jwt: JwtConfig) -> list[str]:
    # Imported here: the verifier's key loading needs cryptography, which loading a config does not.
    from mcp_barbican.security.jwt import check_key_file

    try:
        check_key_file(jwt)
    except ConfigError as exc:
        return [str(exc)]
    return []


def _refuse_password() -> str:
    raise ssl.SSLError("encrypted private keys are not supported")


# ---------------------------------------------------------------------------------------------
# Loading


def find_config(cwd: Path) -> Path | None:
    """The config file `serve` uses without `-c`: the first of CONFIG_FILE_NAMES in `cwd`."""
    for name in CONFIG_FILE_NAMES:
        candidate = cwd / name
        if candidate.is_file():
            return candidate
    return None


def load_environ(cwd: Path, config_dir: Path | None = None) -> dict[str, str]:
    """The variables templates see: the process environment, then `cwd/.env`, then `config_dir/.env`.

    The first place that sets a variable wins: a `.env` file never overrides a set variable, and
    the working directory's `.env` wins over the one beside the config file.
    """
    values: dict[str, str] = {}
    for directory in dict.fromkeys(path.resolve() for path in (config_dir, cwd) if path is not None):
        dotenv_path = directory / ".env"
        if dotenv_path.is_file():
            values.update((key, value) for key, value in dotenv_values(dotenv_path).items() if value is not None)
    values.update(os.environ)
    return values


def load_config(path: Path, environ: Mapping[str, str]) -> ProxyConfig:
    """Read, template and validate one config file, and read every file it names.

    Raises ConfigError listing every error with its key path.
    """
    document = expand_tree(_read_document(path), environ)
    data, origins = _assemble(document, path.name)
    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        problems = _errors(ProxyConfig, exc)
    else:
        problems = _file_problems(config)
        if not problems:
            return config
    raise _config_error([_relocate(loc, message, origins) for loc, message in problems])


def _relocate(loc: Loc, message: str, origins: Mapping[int, _ClaudeOrigin]) -> tuple[Loc, str]:
    if len(loc) >= 2 and loc[0] == "mcps" and isinstance(loc[1], int) and loc[1] in origins:
        return origins[loc[1]].relocate(loc[2:], message)
    return loc, message


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    document = _parse_text(text, json_only=path.suffix.lower() == ".json")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("the top level must be a mapping (server:, mcps:)")
    return document


def _parse_text(text: str, *, json_only: bool) -> Any:
    if json_only or text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_unique_json_object)
        except json.JSONDecodeError as exc:
            if json_only:
                raise ConfigError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_error_message(exc, text)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f"invalid JSON: duplicate key {key!r}")
        result[key] = value
    return result


def _yaml_error_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "syntax error"
    if mark is None:
        return f"invalid YAML: {problem}"
    message = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    lines = text.splitlines()
    if mark.line < len(lines) and "{{" in lines[mark.line]:
        message += " (quote values that contain {{ ... }})"
    return message


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


@dataclass(frozen=True)
class _ClaudeOrigin:
    """Where an MCP built from a `mcpServers` entry came from, to report errors there."""

    name: str
    transport_key: str

    def relocate(self, rest: Loc, message: str) -> tuple[Loc, str]:
        if rest == ("auth",):
            # Claude-style entries have no auth key of their own: only server.auth covers them.
            message = (
                "no auth configured: set server.auth, which covers mcpServers entries (type: none must be explicit)"
            )
        if rest[:1] == ("id",):
            rest = rest[1:]
        if rest[:1] == ("transport",):
            rest = (self.transport_key, *rest[1:])
        return ("mcpServers", self.name, *rest), message


_CLAUDE_KEYS = ("command", "args", "env", "url", "type", "transport", "headers", "cwd")
_CLAUDE_TYPES = {"stdio": "stdio", "sse": "sse", "http": "streamable-http", "streamable-http": "streamable-http"}


def _assemble(document: dict[str, Any], file_name: str) -> tuple[dict[str, Any], dict[int, _ClaudeOrigin]]:
    """Build ProxyConfig input from the top-level keys, converting Claude-style entries."""
    ours = ("server", "mcps") if file_name == _COMPOZY_FILE_NAME else ("server", "mcps", "mcpServers")
    _check_top_level_keys(document, ours, file_name)
    if not any(key in document for key in ours if key != "server"):
        raise ConfigError(f"required: list the MCP servers to proxy ({' or '.join(ours[1:])})", path="mcps")
    mcps = document.get("mcps", [])
    if not isinstance(mcps, list):
        raise ConfigError("must be a list of MCP entries (use [] for none)", path="mcps")
    origins: dict[int, _ClaudeOrigin] = {}
    entries = list(mcps)
    for name, entry in _claude_entries(document.get("mcpServers") if "mcpServers" in ours else None):
        origins[len(entries)] = _ClaudeOrigin(name, "type" if "type" in entry else "transport")
        entries.append(_from_claude(name, entry))
    data: dict[str, Any] = {"mcps": entries}
    if "server" in document:
        data["server"] = document["server"]
    return data, origins


def _check_top_level_keys(document: dict[str, Any], ours: tuple[str, ...], file_name: str) -> None:
    others = [str(key) for key in document if key not in ours]
    if not others:
        return
    if file_name == _COMPOZY_FILE_NAME:
        logger.info("compozy.yaml: reading %s; left to Compozy: %s", " and ".join(ours), ", ".join(others))
        return
    raise ConfigError(f"unknown top-level key (expected one of: {', '.join(ours)})", path=others[0])


def _claude_entries(servers: object) -> Iterator[tuple[str, dict[str, Any]]]:
    if servers is None:
        return
    if not isinstance(servers, dict):
        raise ConfigError("must be a mapping of server name to {command, args, env} or {url}", path="mcpServers")
    for name, entry in servers.items():
        path = f"mcpServers.{name}"
        if not isinstance(name, str) or not _MCP_ID.fullmatch(name) or "__" in name:
            raise ConfigError(f"invalid server name {str(name)!r} (it becomes the MCP id): {_MCP_ID_RULE}", path=path)
        if not isinstance(entry, dict):
            raise ConfigError("must be a mapping such as {command: ..., args: [...]}", path=path)
        yield name, entry


def _from_claude(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    path = f"mcpServers.{name}"
    for key in entry:
        if key not in _CLAUDE_KEYS:
            raise ConfigError(f"unknown key (expected one of: {', '.join(_CLAUDE_KEYS)})", path=f"{path}.{key}")
    if "type" in entry and "transport" in entry:
        raise ConfigError("set type or transport, not both", path=f"{path}.transport")
    result: dict[str, Any] = {"id": name}
    result.update({key: entry[key] for key in ("command", "args", "env", "url", "headers", "cwd") if key in entry})
    kind_key = "type" if "type" in entry else "transport"
    if kind_key in entry:
        kind = entry[kind_key]
        if kind not in _CLAUDE_TYPES:
            raise ConfigError(
                f"must be one of {', '.join(_CLAUDE_TYPES)}, not {_short_repr(kind)}", path=f"{path}.{kind_key}"
            )
        result["transport"] = _CLAUDE_TYPES[kind]
    return result


# ---------------------------------------------------------------------------------------------
# Presenting and checking a loaded config


def masked_dump(config: ProxyConfig) -> dict[str, Any]:
    """The normalized config as a user reads it, with every secret replaced by MASK.

    Masked: static tokens and their hashes, the JWT secret, admin tokens, the storage URL,
    and every value of an MCP's `env` and `headers`. Durations read as written (`600s`).
    """
    dumped = _mask(config, durations=True)
    assert isinstance(dumped, dict)
    return dumped


def masked_mcp(mcp: McpConfig) -> dict[str, Any]:
    """One MCP's normalized definition with its secrets masked (what the admin API shows)."""
    dumped = _mask(mcp)
    assert isinstance(dumped, dict)
    return dumped


def _mask(value: object, *, durations: bool = False) -> object:
    if isinstance(value, BaseModel):
        return {name: _mask_field(value, name, getattr(value, name), durations) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, tuple | list):
        return [_mask(item, durations=durations) for item in value]
    if isinstance(value, dict):
        return {str(key): _mask(item, durations=durations) for key, item in value.items()}
    if isinstance(value, date):
        return value.isoformat()
    return value


def _mask_field(model: BaseModel, name: str, value: object, durations: bool) -> object:
    if isinstance(model, McpConfig) and name in McpConfig.SECRET_MAPS and isinstance(value, dict):
        return dict.fromkeys(value, MASK)
    if isinstance(model, TokenEntry) and name == "sha256" and value is not None:
        return MASK
    if durations and isinstance(value, float) and _is_duration(type(model).model_fields[name].metadata):
        return format_duration(value)
    return _mask(value, durations=durations)


def _is_duration(metadata: list[Any]) -> bool:
    return any(isinstance(item, BeforeValidator) and item.func is parse_duration for item in metadata)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (what `ProxyConfig` accepts)."""
    schema = ProxyConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mcp-barbican config file"
    return schema


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ProxyConfig, *, allow_unauthenticated: bool) -> list[str]:
    """Refuse an unauthenticated MCP on a non-loopback bind; return warnings to log.

    Raises ConfigError at `server.host` when the bind address is not loopback, an MCP's
    effective auth is `none`, and `allow_unauthenticated` is false.
    """
    host = config.server.host
    exposed = not _is_loopback(host)
    open_ids = [mcp.id for mcp in config.mcps if config.effective_auth(mcp).type == "none"]
    warnings: list[str] = []
    if exposed and open_ids:
        if not allow_unauthenticated:
            raise ConfigError(
                f"binding {host} (not loopback) with auth type none on {', '.join(open_ids)} needs "
                "--allow-unauthenticated",
                path="server.host",
            )
        warnings.append(f"binding {host} (not loopback) with NO authentication on: {', '.join(open_ids)}")
    for index, mcp in enumerate(config.mcps):
        if mcp.tls is not None and mcp.tls.insecure_skip_verify:
            warnings.append(
                f"mcps[{index}] ({mcp.id}): tls.insecure_skip_verify is true; the upstream certificate is not verified"
            )
    if exposed and not config.server.allowed_hosts:
        warnings.append(
            f"binding {host} (not loopback) without server.allowed_hosts: list the host names clients use "
            "(DNS-rebinding guard)"
        )
    if exposed and config.server.tls is None and not config.server.trusted_proxies:
        warnings.append(f"binding {host} (not loopback) without server.tls: credentials travel in clear text")
    return warnings
