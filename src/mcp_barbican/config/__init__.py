"""The config file: its schema (frozen pydantic models) and its loading.

`load_config()` reads one YAML or JSON file, expands `{{ .env.NAME }}` / `${NAME}` templates in
every string value, accepts Compozy's `mcps:` list and Claude-style `mcpServers`, and returns a
validated `ProxyConfig`, after reading every file it names. Problems surface as one `ConfigError`
listing each of them with the key path the user wrote (`mcps[0].security.rate_limit.burst_size`),
never a pydantic dump.

Modules: `fields` (value checks, field types), the models by area (`tls`, `auth`, `security`,
`storage`, `server`, `mcp`, `proxy`), `errors` (key paths), `checks` (files named, bind address),
`loader` (reading, `.env`, Compozy and Claude shapes; `templating`, `units`), `present` (masked
dump, JSON Schema; `schema_docs` renders it as docs/configuration.md).
"""

from __future__ import annotations

from mcp_barbican.config.alerts import (
    ALERT_KINDS,
    AlertKind,
    AlertsConfig,
    AuthBurstConfig,
    WebhookConfig,
    webhook_origin,
)
from mcp_barbican.config.auth import (
    JWT_ALGORITHMS,
    SERVER_OWNER,
    AuthConfig,
    IntrospectionConfig,
    JwtConfig,
    MtlsConfig,
    OAuth2Config,
    TokenEntry,
)
from mcp_barbican.config.authorization import AuthorizationConfig, Grants, PolicyRule, compile_condition
from mcp_barbican.config.checks import check_bind, check_files
from mcp_barbican.config.egress import EgressConfig
from mcp_barbican.config.errors import Loc, ModelT, format_path, validate_model
from mcp_barbican.config.fields import (
    Duration,
    HeaderValue,
    HttpUrl,
    IpOrNetwork,
    McpId,
    NonEmptyStr,
    NonNegativeInt,
    Port,
    PositiveDuration,
    PositiveInt,
    Size,
    TokenSecret,
)
from mcp_barbican.config.integrity import IntegrityConfig, ScanConfig
from mcp_barbican.config.loader import CONFIG_FILE_NAMES, find_config, load_config, load_environ
from mcp_barbican.config.mcp import UPSTREAM_PROTOCOL_VERSIONS, McpConfig, ToolFilter
from mcp_barbican.config.present import MASK, config_schema, masked_dump, masked_mcp
from mcp_barbican.config.proxy import ProxyConfig
from mcp_barbican.config.security import (
    BanConfig,
    CorsConfig,
    HeadersConfig,
    LimitsConfig,
    RateLimitConfig,
    SecurityConfig,
)
from mcp_barbican.config.server import AdminConfig, ListenerLimits, MetricsConfig, ServerConfig
from mcp_barbican.config.storage import (
    AuditConfig,
    AuditSink,
    FailMode,
    FileSink,
    RedisSink,
    SqliteSink,
    StdoutSink,
    StorageConfig,
    SyslogSink,
)
from mcp_barbican.config.tls import (
    TLS12_IANA_TO_OPENSSL,
    TLS13_SUITES,
    CipherSuite,
    ServerTLSConfig,
    TlsVersion,
    UpstreamTLSConfig,
)

__all__ = [
    "CONFIG_FILE_NAMES",
    "JWT_ALGORITHMS",
    "MASK",
    "FailMode",
    "SERVER_OWNER",
    "TLS12_IANA_TO_OPENSSL",
    "TLS13_SUITES",
    "UPSTREAM_PROTOCOL_VERSIONS",
    "AdminConfig",
    "AuditConfig",
    "AuditSink",
    "AuthConfig",
    "AuthorizationConfig",
    "Grants",
    "PolicyRule",
    "compile_condition",
    "BanConfig",
    "CipherSuite",
    "CorsConfig",
    "Duration",
    "FileSink",
    "HeaderValue",
    "HeadersConfig",
    "HttpUrl",
    "EgressConfig",
    "ALERT_KINDS",
    "AlertKind",
    "AlertsConfig",
    "AuthBurstConfig",
    "WebhookConfig",
    "webhook_origin",
    "IntegrityConfig",
    "IpOrNetwork",
    "JwtConfig",
    "LimitsConfig",
    "ListenerLimits",
    "Loc",
    "McpConfig",
    "McpId",
    "MetricsConfig",
    "ModelT",
    "NonEmptyStr",
    "NonNegativeInt",
    "IntrospectionConfig",
    "MtlsConfig",
    "OAuth2Config",
    "Port",
    "PositiveDuration",
    "PositiveInt",
    "ProxyConfig",
    "RateLimitConfig",
    "ScanConfig",
    "SecurityConfig",
    "ServerConfig",
    "ServerTLSConfig",
    "Size",
    "RedisSink",
    "SqliteSink",
    "StdoutSink",
    "StorageConfig",
    "SyslogSink",
    "TlsVersion",
    "TokenEntry",
    "TokenSecret",
    "ToolFilter",
    "UpstreamTLSConfig",
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
