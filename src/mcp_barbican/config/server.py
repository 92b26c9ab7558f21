"""The proxy's own listener and the defaults every MCP inherits (`server:`)."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import AfterValidator, SecretStr, model_validator

from mcp_barbican.config.alerts import AlertsConfig
from mcp_barbican.config.auth import AuthConfig
from mcp_barbican.config.authorization import AuthorizationConfig
from mcp_barbican.config.egress import EgressConfig
from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import (
    HttpUrl,
    IpOrNetwork,
    Model,
    Port,
    PositiveDuration,
    PositiveInt,
    Size,
    TokenSecret,
    check_hostname,
    check_port_text,
    split_host_port,
)
from mcp_barbican.config.integrity import IntegrityConfig
from mcp_barbican.config.security import SecurityConfig
from mcp_barbican.config.storage import AuditConfig, StorageConfig
from mcp_barbican.config.telemetry import TelemetryConfig
from mcp_barbican.config.tls import ServerTLSConfig

__all__ = ["AdminConfig", "ListenerLimits", "MetricsConfig", "ServerConfig"]


def _check_allowed_host(value: str) -> str:
    text = value.strip().lower()
    if not text or "/" in text or "@" in text:
        raise ValueError(f"{value!r} is not a host or host:port (no scheme, no path)")
    host, port = split_host_port(text, value)
    if port or text.endswith(":"):
        check_port_text(port, value)
    bare = host.strip("[]")
    check_hostname(bare, value)
    if ":" in bare and not host.startswith("["):
        host = f"[{bare}]"
    return f"{host}:{port}" if port else host


#: A session key's least length: 32 characters of a random string carry at least 128 bits.
MIN_SESSION_KEY_CHARS = 32


def _check_session_key(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < MIN_SESSION_KEY_CHARS:
        raise ValueError(f"must be at least {MIN_SESSION_KEY_CHARS} characters (a random string, e.g. 32 bytes base64)")
    return value


SessionKey = Annotated[SecretStr, AfterValidator(_check_session_key)]


def _check_bind_host(value: str) -> str:
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("must not be empty (use 0.0.0.0 or :: for every interface)")
    check_hostname(text.lower(), value)
    return text


class ConsoleConfig(Model):
    """The web console at /admin/ui: a login with an admin token opens a session of `session_lifetime`."""

    enabled: bool = True
    session_lifetime: PositiveDuration = 8 * 3600.0


class AdminConfig(Model):
    """The admin API's credentials and address allowlist."""

    token: TokenSecret | None = None
    tokens: tuple[TokenSecret, ...] = ()
    ip_whitelist: tuple[IpOrNetwork, ...] = ("127.0.0.1", "::1")
    port: Port | None = None
    allow_stdio: bool = True
    ui: ConsoleConfig = ConsoleConfig()


class ListenerLimits(Model):
    """What one client may hold of the listener before it is authenticated (`server.limits`)."""

    max_header_bytes: Size = 16384
    max_headers: PositiveInt = 100
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 30.0
    max_connections: PositiveInt = 1000
    max_sessions_per_principal: PositiveInt = 20
    init_timeout: PositiveDuration = 10.0


class MetricsConfig(Model):
    """`public: true` serves /metrics without the admin token."""

    public: bool = False


class ServerConfig(Model):
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
    #: How clients reach the proxy (scheme, host, optional path prefix): OAuth resource identifiers and metadata.
    public_url: HttpUrl | None = None
    authorization: AuthorizationConfig | None = None
    #: Keys that seal session ids so any replica can continue a session; the first seals, all open (rotation:
    #: add the new key second everywhere, then move it first, then drop the old one).
    session_keys: tuple[SessionKey, ...] = ()
    #: Default tool integrity for every MCP without its own `integrity` block.
    integrity: IntegrityConfig = IntegrityConfig()
    #: What the proxy may fetch on its own account (JWKS, OAuth, token exchange, API-registered upstreams).
    egress: EgressConfig = EgressConfig()
    #: Webhooks told of bans, bursts of authentication failures, upstreams down, tool changes, scanner findings.
    alerts: AlertsConfig = AlertsConfig()
    #: OpenTelemetry traces over OTLP/HTTP (the `otel` extra); absent: off.
    telemetry: TelemetryConfig | None = None
    #: One INFO line per request on the `mcp_barbican.access` logger.
    access_log: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        secrets = [key.get_secret_value() for key in self.session_keys]
        for index, key in enumerate(secrets):
            if key in secrets[:index]:
                raise LocatedError(("session_keys", index), "repeats an earlier key")
        if self.admin.port is not None and self.admin.port == self.port:
            raise LocatedError(("admin", "port"), f"must differ from server.port ({self.port}), or be left unset")
        if self.storage.type != "redis":
            for index, sink in enumerate(self.audit.sinks):
                if sink.type == "redis":
                    raise LocatedError(("audit", "sinks", index), "type redis needs server.storage.type: redis")
        return self
