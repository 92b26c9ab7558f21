from __future__ import annotations

import hashlib
import json
import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
import yaml

from mcp_barbican.config import (
    MASK,
    TLS12_IANA_TO_OPENSSL,
    TLS13_SUITES,
    AuthConfig,
    FileSink,
    McpConfig,
    ProxyConfig,
    SqliteSink,
    StorageConfig,
    check_bind,
    find_config,
    format_path,
    load_config,
    load_environ,
    masked_dump,
    validate_model,
)
from mcp_barbican.config.templating import expand_string
from mcp_barbican.config.units import parse_duration, parse_size
from mcp_barbican.exceptions import ConfigError

CONFIGS = Path(__file__).parent / "configs"

FULL_ENV = {
    "FULL_ADMIN_TOKEN": "full-admin-token-1",
    "FULL_ADMIN_TOKEN_2": "full-admin-token-2",
    "FULL_CLIENT_TOKEN": "full-client-token",
    "FULL_CI_TOKEN": "full-ci-token",
    "FULL_OPS_SHA256": "0f" * 32,
    "FULL_UPSTREAM_TOKEN": "full-upstream-token",
    "FULL_API_KEY": "full-api-key",
    "FULL_JWT_SECRET": "full-jwt-secret-that-is-at-least-32-bytes",
    "FULL_SESSION_KEY": "full-session-key-with-at-least-32-characters",
    "FULL_OTLP_KEY": "full-otlp-key",
}


def write_full_files(directory: Path) -> None:
    """The certificates and keys full.yaml names, relative to the working directory."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(directory / "clients-ca.pem")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    for name in ("server", "client"):
        leaf = ca.issue_cert("localhost")
        leaf.cert_chain_pems[0].write_to_path(directory / f"{name}.pem")
        leaf.private_key_pem.write_to_path(directory / f"{name}-key.pem")


@pytest.fixture
def full_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_full_files(tmp_path)
    monkeypatch.chdir(tmp_path)


# A server-wide token so that MCPs in the cases below need no auth block of their own.
AUTH = "server: {auth: {type: token, token: tok-client}}\n"


def write(tmp_path: Path, text: str, name: str = "mcp-barbican.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, name: str = "mcp-barbican.yaml"
) -> ProxyConfig:
    return load_config(write(tmp_path, text, name), environ or {})


def load_error(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, name: str = "mcp-barbican.yaml"
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ, name)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Every kind of mistake, with its key path


def server(fields: str) -> str:
    """A config whose server block has `fields` besides a client token, and no MCP."""
    return f"server: {{auth: {{type: token, token: tok-client}}, {fields}}}\nmcps: []\n"


def mcp(fields: str) -> str:
    """A config with one MCP `a` made of `fields`, covered by a server-wide token."""
    return AUTH + f"mcps: [{{id: a, {fields}}}]\n"


def jwt(fields: str) -> str:
    """A config with one stdio MCP whose auth is a JWT block made of `fields`."""
    return mcp(f"command: x, auth: {{type: jwt, jwt: {{{fields}}}}}")


def cors(origins: str, credentials: bool = False) -> str:
    allow = "true" if credentials else "false"
    return mcp(f"command: x, security: {{cors: {{allowed_origins: [{origins}], allow_credentials: {allow}}}}}")


def auth(fields: str) -> str:
    return mcp(f"command: x, auth: {{{fields}}}")


JWKS = "jwks_url: 'https://i/jwks'"
SERVER_TLS = "cert_file: c, key_file: k"

MISTAKES = [
    # Unknown keys at every depth
    pytest.param("mcps: []\nworkflows: []\n", "workflows", "unknown top-level key", id="unknown-top-level-key"),
    pytest.param(server("hots: x"), "server.hots", "unknown key", id="unknown-key-server"),
    pytest.param(mcp("command: x, comand: y"), "mcps[0].comand", "unknown key", id="unknown-key-mcp"),
    pytest.param(
        mcp("command: x, security: {rate_limit: {requests_per_second: 5}}"),
        "mcps[0].security.rate_limit.requests_per_second",
        "expected one of: requests_per_minute",
        id="unknown-key-rate-limit",
    ),
    pytest.param(
        jwt(f"{JWKS}, algorithms: [RS256], kid: 1"), "mcps[0].auth.jwt.kid", "unknown key", id="unknown-key-jwt"
    ),
    pytest.param(
        server("audit: {sinks: [{type: file, path: a.log, pth: x}]}"),
        "server.audit.sinks[0].pth",
        "unknown key (expected one of: type, path, max_bytes, backups)",
        id="unknown-key-in-tagged-sink",
    ),
    # Durations and sizes
    pytest.param(
        mcp("command: x, start_timeout: 5x"), "mcps[0].start_timeout", "invalid duration '5x'", id="bad-duration"
    ),
    pytest.param(
        server("session_idle_timeout: -5"),
        "server.session_idle_timeout",
        "must not be negative",
        id="negative-duration",
    ),
    pytest.param(mcp("command: x, start_timeout: 0"), "mcps[0].start_timeout", "greater than 0", id="zero-timeout"),
    pytest.param(
        server("security: {limits: {max_body_size: 4XB}}"),
        "server.security.limits.max_body_size",
        "invalid size '4XB'",
        id="bad-size",
    ),
    # MCP entries
    pytest.param(
        AUTH + "mcps: [{id: a, command: x}, {id: a, command: y}]",
        "mcps[1].id",
        "duplicate id 'a' (also mcps[0])",
        id="duplicate-id",
    ),
    pytest.param(
        AUTH + "mcps: [{id: Bad Id, command: x}]", "mcps[0].id", "invalid id 'Bad Id': use 1-64 characters", id="bad-id"
    ),
    pytest.param(
        AUTH + "mcps: [{id: -a, command: x}]", "mcps[0].id", "starting with a letter or digit", id="bad-id-dash"
    ),
    pytest.param(
        AUTH + "mcps: [{id: a__b, command: x}]", "mcps[0].id", "'__' is reserved", id="bad-id-double-underscore"
    ),
    pytest.param(
        AUTH + "mcps: [{id: a_, command: x}]", "mcps[0].id", "may not end with '_'", id="bad-id-trailing-underscore"
    ),
    pytest.param(
        mcp("transport: stdio"), "mcps[0].command", "required for transport stdio", id="stdio-without-command"
    ),
    pytest.param(mcp("transport: sse"), "mcps[0].url", "required for transport sse", id="sse-without-url"),
    pytest.param(
        AUTH + "mcps: [{id: a}]", "mcps[0].url", "required for transport streamable-http", id="nothing-to-run"
    ),
    pytest.param(mcp("url: 'http://h/mcp', command: x"), "mcps[0]", "mutually exclusive", id="url-and-command"),
    pytest.param(mcp("url: 'ftp://h/mcp'"), "mcps[0].url", "not an http:// or https:// URL", id="url-not-http"),
    pytest.param(mcp("url: 'https://u:p@h/mcp'"), "mcps[0].url", "credentials in the URL", id="url-with-credentials"),
    pytest.param(mcp("transport: pigeon, command: x"), "mcps[0].transport", "must be one of", id="bad-transport"),
    pytest.param(
        mcp("command: x, headers: {X-A: b}"), "mcps[0].headers", "only used with transports sse", id="headers-on-stdio"
    ),
    pytest.param(
        mcp("url: 'http://h', args: [x]"), "mcps[0].args", "only used with transport stdio", id="args-on-http"
    ),
    pytest.param(
        mcp("url: 'http://h', headers: {Host: evil}"), "mcps[0].headers.Host", "set by the proxy", id="forbidden-header"
    ),
    pytest.param(
        mcp("url: 'http://h', headers: {'X A': b}"),
        "mcps[0].headers.X A",
        "not a valid HTTP header name",
        id="bad-header-name",
    ),
    pytest.param(
        mcp('url: "http://h", headers: {X-A: "b\\r\\nX-B: c"}'), "mcps[0].headers.X-A", "CR, LF", id="header-value-crlf"
    ),
    pytest.param(mcp("command: x, env: {1BAD: v}"), "mcps[0].env.1BAD", "environment variable name", id="bad-env-name"),
    pytest.param(
        mcp("command: x, max_sessions: -1"),
        "mcps[0].max_sessions",
        "greater than or equal to 1",
        id="negative-sessions",
    ),
    pytest.param(
        mcp("command: x, tool_filter: {mode: allow, list: []}"),
        "mcps[0].tool_filter.list",
        "at least one",
        id="empty-filter",
    ),
    pytest.param(
        mcp("command: x, tool_filter: {mode: deny, list: [x]}"),
        "mcps[0].tool_filter.mode",
        "must be one of 'allow' or 'block', not 'deny'",
        id="bad-filter-mode",
    ),
    pytest.param(AUTH + "mcps: [filesystem]", "mcps[0]", "must be a mapping", id="mcp-not-a-mapping"),
    pytest.param(AUTH + "mcps: {id: a}", "mcps", "must be a list", id="mcps-not-a-list"),
    pytest.param(AUTH, "mcps", "required", id="mcps-missing"),
    # CORS
    pytest.param(
        cors("'https://a.com', '*'", credentials=True),
        "mcps[0].security.cors.allowed_origins[1]",
        "'*' cannot be combined with allow_credentials",
        id="cors-star-with-credentials",
    ),
    pytest.param(cors("'null'"), "mcps[0].security.cors.allowed_origins[0]", "'null'", id="cors-null-origin"),
    pytest.param(
        cors("'https://a.com/'"),
        "mcps[0].security.cors.allowed_origins[0]",
        "no path or trailing slash",
        id="cors-slash",
    ),
    pytest.param(
        cors("'https://a.*.com'"),
        "mcps[0].security.cors.allowed_origins[0]",
        "whole leftmost label",
        id="cors-inner-wildcard",
    ),
    pytest.param(
        cors("'*example.com'"), "mcps[0].security.cors.allowed_origins[0]", "scheme://host", id="cors-half-wildcard"
    ),
    pytest.param(cors("'*.com'"), "mcps[0].security.cors.allowed_origins[0]", "two labels", id="cors-tld-wildcard"),
    # IP lists
    pytest.param(
        mcp("command: x, security: {ip_whitelist: ['10.0.0.0/8', '10.0.0.0/33']}"),
        "mcps[0].security.ip_whitelist[1]",
        "'10.0.0.0/33' is not an IP address or CIDR",
        id="bad-cidr",
    ),
    pytest.param(
        mcp("command: x, security: {ip_blacklist: [localhost]}"),
        "mcps[0].security.ip_blacklist[0]",
        "not an IP address",
        id="hostname-in-ip-list",
    ),
    pytest.param(
        server("trusted_proxies: ['300.1.1.1']"), "server.trusted_proxies[0]", "not an IP", id="bad-trusted-proxy"
    ),
    pytest.param(
        server("admin: {ip_whitelist: ['fe80::/129']}"), "server.admin.ip_whitelist[0]", "not an IP", id="bad-admin-ip"
    ),
    # JWT
    pytest.param(
        jwt(f"{JWKS}, algorithms: [none]"), "mcps[0].auth.jwt.algorithms[0]", "'none' is never accepted", id="alg-none"
    ),
    pytest.param(
        jwt(f"{JWKS}, algorithms: [RS256, NoNe]"),
        "mcps[0].auth.jwt.algorithms[1]",
        "'none' is never accepted",
        id="alg-none-any-case",
    ),
    pytest.param(
        jwt(f"{JWKS}, algorithms: [rs256]"),
        "mcps[0].auth.jwt.algorithms[0]",
        "unknown algorithm 'rs256'",
        id="alg-unknown",
    ),
    pytest.param(
        jwt(f"{JWKS}, algorithms: [HS256, RS256]"), "mcps[0].auth.jwt.algorithms", "key confusion", id="alg-hs-rs"
    ),
    pytest.param(
        jwt(f"{JWKS}, algorithms: []"), "mcps[0].auth.jwt.algorithms", "at least one algorithm", id="alg-empty"
    ),
    pytest.param(jwt(JWKS), "mcps[0].auth.jwt.algorithms", "required key is missing", id="alg-missing"),
    pytest.param(
        jwt(f"{JWKS}, algorithms: [HS256]"),
        "mcps[0].auth.jwt.secret",
        "uses secret, not public_key_file",
        id="hs-with-jwks",
    ),
    pytest.param(
        jwt("secret: short, algorithms: [HS256]"), "mcps[0].auth.jwt.secret", "at least 32 bytes", id="hs-short"
    ),
    pytest.param(
        jwt(f"secret: {'s' * 40}, algorithms: [HS512]"),
        "mcps[0].auth.jwt.secret",
        "at least 64 bytes",
        id="hs512-short",
    ),
    pytest.param(
        jwt(f"secret: {'s' * 40}, algorithms: [RS256]"), "mcps[0].auth.jwt.secret", "only for HS*", id="rs-secret"
    ),
    pytest.param(
        jwt(f"public_key_file: k.pem, {JWKS}, algorithms: [ES256]"),
        "mcps[0].auth.jwt.public_key_file",
        "exactly one of public_key_file and jwks_url",
        id="two-key-sources",
    ),
    pytest.param(
        jwt(f"{JWKS}, algorithms: [ES256], audience: []"),
        "mcps[0].auth.jwt.audience",
        "non-empty list",
        id="empty-audience",
    ),
    # TLS
    pytest.param(
        server(f"tls: {{{SERVER_TLS}, min_version: '1.1'}}"), "server.tls.min_version", "RFC 8996", id="server-tls-1.1"
    ),
    pytest.param(
        mcp("url: 'https://h', tls: {min_version: 1.0}"), "mcps[0].tls.min_version", "RFC 8996", id="upstream-tls-1.0"
    ),
    pytest.param(
        server(f"tls: {{{SERVER_TLS}, cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_RSA_WITH_RC4_128_SHA]}}"),
        "server.tls.cipher_suites[1]",
        "unknown or insecure cipher suite 'TLS_RSA_WITH_RC4_128_SHA'",
        id="unknown-cipher",
    ),
    pytest.param(
        mcp("url: 'https://h', tls: {cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]}"),
        "mcps[0].tls.cipher_suites[0]",
        "use the IANA name TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        id="openssl-cipher-name",
    ),
    pytest.param(
        server(f"tls: {{{SERVER_TLS}, min_version: '1.3', max_version: '1.2'}}"),
        "server.tls.max_version",
        "below min_version",
        id="tls-min-above-max",
    ),
    pytest.param(
        server("tls: {key_file: k}"), "server.tls.cert_file", "required when TLS is enabled", id="tls-no-cert"
    ),
    pytest.param(
        server(f"tls: {{{SERVER_TLS}, client_auth: required}}"),
        "server.tls.ca_file",
        "client_auth",
        id="mtls-without-ca",
    ),
    pytest.param(
        mcp("url: 'http://h', tls: {enabled: true}"), "mcps[0].tls", "not https://", id="upstream-tls-http-url"
    ),
    pytest.param(
        mcp("url: 'https://h', tls: {cert_file: c.pem}"),
        "mcps[0].tls.key_file",
        "required with cert_file",
        id="cert-no-key",
    ),
    pytest.param(
        mcp("command: x, tls: {enabled: false}"), "mcps[0].tls", "only used with transports sse", id="tls-on-stdio"
    ),
    # Auth
    pytest.param(
        "mcps: [{id: a, command: x}, {id: b, command: y}]",
        "mcps[0].auth",
        "no auth configured: set mcps[0].auth or server.auth (type: none must be explicit)",
        id="missing-auth",
    ),
    pytest.param(auth("type: none, token: t"), "mcps[0].auth.token", "not used with type none", id="none-with-token"),
    pytest.param(
        auth("type: token"), "mcps[0].auth.token", "type token needs token or tokens", id="token-without-token"
    ),
    pytest.param(auth("type: token, token: ''"), "mcps[0].auth.token", "must not be empty", id="empty-token"),
    pytest.param(auth("type: token, token: 'a b'"), "mcps[0].auth.token", "without spaces", id="token-with-space"),
    pytest.param(auth("type: jwt"), "mcps[0].auth.jwt", "required for type jwt", id="jwt-without-jwt"),
    pytest.param(
        auth(f"type: oauth2, jwt: {{{JWKS}, algorithms: [RS256]}}"),
        "mcps[0].auth.oauth2",
        "required for type oauth2",
        id="oauth2-without-oauth2",
    ),
    pytest.param(
        auth(f"type: oauth2, jwt: {{{JWKS}, algorithms: [RS256]}}, oauth2: {{authorization_servers: []}}"),
        "mcps[0].auth.oauth2.authorization_servers",
        "at least one",
        id="oauth2-no-servers",
    ),
    pytest.param(
        auth("type: oauth2, oauth2: {audience: https://p/mcp/a}"),
        "mcps[0].auth.oauth2.issuer",
        "required",
        id="oauth2-no-issuer",
    ),
    pytest.param(
        auth("type: oauth2, oauth2: {issuer: 'https://as'}"),
        "mcps[0].auth.oauth2.audience",
        "server.public_url",
        id="oauth2-no-audience-no-public-url",
    ),
    pytest.param(
        AUTH.replace("server: {", "server: {public_url: 'ftp://x', ")
        + "mcps: [{id: a, command: x, auth: {type: oauth2, oauth2: {issuer: 'https://as'}}}]",
        "server.public_url",
        "http",
        id="bad-public-url",
    ),
    pytest.param(
        auth(
            f"type: oauth2, jwt: {{{JWKS}, algorithms: [RS256]}}, oauth2: {{issuer: 'https://as', "
            "introspection: {url: 'https://as/i', client_id: c, client_secret: s}}"
        ),
        "mcps[0].auth.oauth2.introspection",
        "not both",
        id="oauth2-jwt-and-introspection",
    ),
    pytest.param(
        auth(f"type: oauth2, jwt: {{{JWKS}, algorithms: [RS256]}}, oauth2: {{issuer: 'https://as', audience: x}}"),
        "mcps[0].auth.oauth2.audience",
        "jwt.audience",
        id="oauth2-audience-beside-jwt",
    ),
    pytest.param(
        auth(f"type: oauth2, jwt: {{{JWKS}, algorithms: [RS256]}}, oauth2: {{issuer: 'https://as', leeway: 5s}}"),
        "mcps[0].auth.oauth2.leeway",
        "jwt.leeway",
        id="oauth2-leeway-beside-jwt",
    ),
    pytest.param(
        auth("type: oauth2, oauth2: {issuer: 'https://as', audience: x, algorithms: [RS256, HS256]}"),
        "mcps[0].auth.oauth2.algorithms[1]",
        "shared secret",
        id="oauth2-hmac",
    ),
    pytest.param(
        auth("type: oauth2, oauth2: {issuer: 'https://as', audience: x, introspection: {url: 'https://as/i'}}"),
        "mcps[0].auth.oauth2.introspection.client_id",
        "",
        id="introspection-without-client",
    ),
    pytest.param(
        auth("type: magic"),
        "mcps[0].auth.type",
        "must be one of 'token', 'jwt', 'oauth2', 'mtls' or 'none'",
        id="bad-auth-type",
    ),
    pytest.param(
        auth(f"type: token, tokens: [{{id: t1, token: x1, sha256: '{'a' * 64}'}}]"),
        "mcps[0].auth.tokens[0].token",
        "exactly one of token and sha256",
        id="token-and-sha256",
    ),
    pytest.param(
        auth("type: token, tokens: [{id: t1, sha256: abc}]"),
        "mcps[0].auth.tokens[0].sha256",
        "64 hexadecimal",
        id="bad-sha",
    ),
    pytest.param(
        auth("type: token, tokens: [{id: t1, token: x1}, {id: t1, token: x2}]"),
        "mcps[0].auth.tokens[1].id",
        "duplicate token id 't1' (also tokens[0])",
        id="duplicate-token-id",
    ),
    pytest.param(
        auth("type: token, token: x1, tokens: [{id: t1, token: x1}]"),
        "mcps[0].auth.tokens[0]",
        "same token value as 'token'",
        id="duplicate-token-value",
    ),
    # Principal ids: token:{id} names one credential across the file
    pytest.param(
        "server: {auth: {type: token, tokens: [{id: ci, token: x1}]}}\n"
        "mcps: [{id: a, command: x}, {id: b, command: x, auth: {type: token, tokens: [{id: ci, token: x2}]}}]",
        "mcps[1].auth.tokens[0].id",
        "token id 'ci' is also server.auth.tokens[0].id, with another token",
        id="token-id-in-server-and-mcp",
    ),
    pytest.param(
        "mcps: [{id: a, command: x, auth: {type: token, tokens: [{id: ci, token: x1}]}},"
        " {id: b, command: x, auth: {type: token, tokens: [{id: t, token: x3}, {id: ci, token: x2}]}}]",
        "mcps[1].auth.tokens[1].id",
        "token id 'ci' is also mcps[0].auth.tokens[0].id, with another token",
        id="token-id-in-two-mcps",
    ),
    pytest.param(
        auth("type: token, tokens: [{id: 'mcp:b', token: x1}]"),
        "mcps[0].auth.tokens[0].id",
        "invalid token id 'mcp:b'",
        id="colon-in-token-id",
    ),
    pytest.param(
        auth("type: token, tokens: [{id: server, token: x1}]"),
        "mcps[0].auth.tokens[0].id",
        "'server' is reserved",
        id="token-id-server",
    ),
    pytest.param(
        "server: {auth: {type: token, token: same}, admin: {token: same}}\nmcps: []",
        "server.admin.token",
        "differ from every client token",
        id="admin-token-is-client-token",
    ),
    # Rate limits, storage, audit, server
    pytest.param(
        server("security: {rate_limit: {per_ip_burst_size: 5}}"),
        "server.security.rate_limit.per_ip_burst_size",
        "needs per_ip_requests_per_minute",
        id="burst-without-rate",
    ),
    pytest.param(
        server("security: {rate_limit: {requests_per_minute: 0}}"),
        "server.security.rate_limit.requests_per_minute",
        "greater than or equal to 1",
        id="zero-rate",
    ),
    pytest.param(server("storage: {type: redis}"), "server.storage.url", "required with type redis", id="redis-no-url"),
    pytest.param(
        server("storage: {type: redis, url: 'http://h:6379'}"),
        "server.storage.url",
        "must start with redis:// or rediss://",
        id="redis-wrong-scheme",
    ),
    pytest.param(
        server("audit: {sinks: [{type: stdout}, {type: redis}]}"),
        "server.audit.sinks[1]",
        "type redis needs server.storage.type: redis",
        id="redis-audit-sink-without-redis-storage",
    ),
    pytest.param(
        server("storage: {type: redis, url: 'redis://h'}, audit: {sinks: [{type: redis, max_len: 0}]}"),
        "server.audit.sinks[0].max_len",
        "greater than or equal to 1",
        id="redis-audit-sink-max-len",
    ),
    pytest.param(
        server("storage: {type: redis, url: 'redis://h', fail_mode: {rate_limit: maybe}}"),
        "server.storage.fail_mode.rate_limit",
        "open",
        id="redis-fail-mode-value",
    ),
    pytest.param(
        server("storage: {type: sqlite, key_prefix: 'x:'}"),
        "server.storage.key_prefix",
        "only used with type redis",
        id="redis-prefix-without-redis",
    ),
    pytest.param(
        server("storage: {type: memory, url: 'redis://h'}"),
        "server.storage.url",
        "only used with type redis",
        id="redis-url-without-redis",
    ),
    pytest.param(
        server("audit: {sinks: [{type: kafka}]}"), "server.audit.sinks[0]", "unknown type 'kafka'", id="unknown-sink"
    ),
    pytest.param(
        server("audit: {sinks: [{path: a}]}"),
        "server.audit.sinks[0].type",
        "required key is missing",
        id="sink-no-type",
    ),
    pytest.param(
        server("audit: {sinks: [{type: file}]}"),
        "server.audit.sinks[0].path",
        "required key is missing",
        id="file-no-path",
    ),
    pytest.param(
        server("audit: {sinks: [{type: syslog, facility: local9}]}"),
        "server.audit.sinks[0].facility",
        "unknown facility",
        id="bad-syslog-facility",
    ),
    pytest.param(server("port: 70000"), "server.port", "less than or equal to 65535", id="port-out-of-range"),
    pytest.param(server("port: yes"), "server.port", "must be a number, not true", id="port-bool"),
    pytest.param(
        server("admin: {port: 6001}"), "server.admin.port", "must differ from server.port", id="admin-port-clash"
    ),
    pytest.param(
        server("allowed_hosts: ['http://a.com']"), "server.allowed_hosts[0]", "no scheme", id="bad-allowed-host"
    ),
    pytest.param(
        server('security: {headers: {csp: "a\\nb"}}'), "server.security.headers.csp", "CR, LF", id="csp-with-newline"
    ),
]


@pytest.mark.parametrize(("text", "path", "fragment"), MISTAKES)
def test_each_mistake_is_reported_at_its_key_path(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    error = load_error(tmp_path, text)
    assert error.path == path
    assert fragment in str(error)
    assert "pydantic" not in str(error)


def test_duplicate_id_message_is_exact(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, AUTH + "mcps: [{id: a, command: x}, {id: b, command: x}, {id: c, command: x}, {id: b, command: y}]"
    )
    assert str(error) == "mcps[3].id: duplicate id 'b' (also mcps[1])"


def test_missing_auth_message_names_the_entry(tmp_path: Path) -> None:
    error = load_error(tmp_path, "mcps: [{id: a, command: x, auth: {type: none}}, {id: b, command: y}]")
    assert (
        str(error) == "mcps[1].auth: no auth configured: set mcps[1].auth or server.auth (type: none must be explicit)"
    )


def test_every_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    text = AUTH.replace("server: {", "server: {port: 0, ") + "mcps: [{id: a, command: x, one: 1}, {id: B, command: y}]"
    error = load_error(tmp_path, text)
    assert error.path == "server.port"
    assert [line.split(":")[0] for line in error.lines()] == ["server.port", "mcps[0].one", "mcps[1].id"]
    assert error.lines()[1].startswith("mcps[0].one: unknown key")


def test_validate_model_reports_every_error() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_model(McpConfig, {"id": "a", "command": "x", "one": 1, "two": 2})
    assert caught.value.lines() == [
        "one: unknown key (expected one of: " + ", ".join(McpConfig.model_fields) + ")",
        "two: unknown key (expected one of: " + ", ".join(McpConfig.model_fields) + ")",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, "server:\n  host: 127.0.0.1\n   port: 6001\nmcps: []\n")
    assert "invalid YAML at line 3" in str(error)


def test_unquoted_template_gets_a_hint(tmp_path: Path) -> None:
    error = load_error(tmp_path, "server:\n  auth: {type: token, token: {{ .env.T }}}\nmcps: []\n")
    assert "quote values that contain {{ ... }}" in str(error)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "mcps: []\nserver: {port: 1}\nserver: {port: 2}\n")
    assert "duplicate key 'server'" in str(error)
    assert "line 3" in str(error)


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = AUTH + "x-base: &base {command: x, max_sessions: 3}\nmcps: [{<<: *base, id: a, max_sessions: 5}]\n"
    config = load(tmp_path, text, name="compozy.yaml")
    assert config.mcps[0].max_sessions == 5
    assert config.mcps[0].command == "x"


def test_duplicate_json_key_is_an_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, '{"mcps": [], "mcps": []}', name="c.json")
    assert "duplicate key 'mcps'" in str(error)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, '{\n  "mcps": [,]\n}', name="c.json")
    assert "invalid JSON at line 2" in str(error)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "top level must be a mapping" in str(load_error(tmp_path, "- a\n- b\n"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", {})


# ---------------------------------------------------------------------------------------------
# Templating


TEMPLATES = [
    pytest.param("{{ .env.A }}", {"A": "x"}, "x", id="go-style"),
    pytest.param("{{.env.A}}", {"A": "x"}, "x", id="go-style-no-spaces"),
    pytest.param("Bearer ${A}", {"A": "x"}, "Bearer x", id="shell-style"),
    pytest.param("${A:-fallback}", {}, "fallback", id="default-used-when-unset"),
    pytest.param("${A:-fallback}", {"A": ""}, "fallback", id="default-used-when-empty"),
    pytest.param("${A:-fallback}", {"A": "set"}, "set", id="default-unused-when-set"),
    pytest.param("${A:-}", {}, "", id="empty-default"),
    pytest.param("${A}", {"A": ""}, "", id="set-but-empty"),
    pytest.param("$${A}", {}, "${A}", id="escaped-dollar-brace"),
    pytest.param("cost: $5, ${A}", {"A": "x"}, "cost: $5, x", id="lone-dollar-kept"),
    pytest.param("${A}", {"A": "${B}"}, "${B}", id="values-not-expanded-again"),
    pytest.param("{{ .env.A }}-${B}", {"A": "1", "B": "2"}, "1-2", id="both-forms"),
]


@pytest.mark.parametrize(("template", "environ", "expected"), TEMPLATES)
def test_templates_expand(template: str, environ: dict[str, str], expected: str) -> None:
    assert expand_string(template, environ) == expected


TEMPLATE_ERRORS = [
    pytest.param("${MISSING}", "environment variable MISSING is not set", id="unset-shell"),
    pytest.param("{{ .env.MISSING }}", "environment variable MISSING is not set", id="unset-go"),
    pytest.param("{{ .Values.token }}", "unsupported template", id="unsupported-go-template"),
    pytest.param("${1BAD}", "invalid variable reference", id="bad-name"),
    pytest.param("${A", "unterminated", id="unterminated"),
    pytest.param("${A-default}", "invalid variable reference", id="bash-dash-without-colon"),
]


@pytest.mark.parametrize(("template", "fragment"), TEMPLATE_ERRORS)
def test_bad_templates_are_errors(tmp_path: Path, template: str, fragment: str) -> None:
    error = load_error(tmp_path, AUTH + f"mcps: [{{id: a, command: x, env: {{API_KEY: '{template}'}}}}]")
    assert error.path == "mcps[0].env.API_KEY"
    assert fragment in str(error)


def test_unset_variable_error_names_variable_and_path(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, "server:\n  auth:\n    type: token\n    token: '{{ .env.MCP_AUTH_TOKEN }}'\nmcps: []\n"
    )
    assert error.path == "server.auth.token"
    assert "MCP_AUTH_TOKEN" in str(error)


def test_templates_apply_to_list_items_and_numbers(tmp_path: Path) -> None:
    text = "server: {port: '${PORT:-7001}', auth: {type: none}}\nmcps: [{id: a, command: x, args: ['--dir', '${DIR}']}]"
    config = load(tmp_path, text, {"DIR": "/data"})
    assert config.server.port == 7001
    assert config.mcps[0].args == ("--dir", "/data")


def test_keys_are_not_templated(tmp_path: Path) -> None:
    jwt = "{jwks_url: 'https://i/j', algorithms: [RS256], required_claims: {'${X}': '${X}'}}"
    config = load(tmp_path, AUTH + f"mcps: [{{id: a, command: x, auth: {{type: jwt, jwt: {jwt}}}}}]", {"X": "1"})
    auth = config.effective_auth(config.mcps[0])
    assert auth.jwt is not None and auth.jwt.required_claims == {"${X}": "1"}


# ---------------------------------------------------------------------------------------------
# .env


def test_dotenv_never_overrides_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("SHARED=from-file\nONLY_FILE=file-value\n# comment\nNO_VALUE\n")
    monkeypatch.setenv("SHARED", "from-process")
    monkeypatch.delenv("ONLY_FILE", raising=False)
    environ = load_environ(tmp_path)
    assert environ["SHARED"] == "from-process"
    assert environ["ONLY_FILE"] == "file-value"
    assert "NO_VALUE" not in environ


def test_dotenv_does_not_leak_into_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("MCP_BARBICAN_TEST_ONLY_IN_FILE=1\n")
    monkeypatch.delenv("MCP_BARBICAN_TEST_ONLY_IN_FILE", raising=False)
    load_environ(tmp_path)
    import os

    assert "MCP_BARBICAN_TEST_ONLY_IN_FILE" not in os.environ


def test_without_dotenv_the_environment_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_BARBICAN_TEST_VAR", "x")
    assert load_environ(tmp_path)["MCP_BARBICAN_TEST_VAR"] == "x"


def test_dotenv_value_feeds_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_AUTH_TOKEN", raising=False)
    (tmp_path / ".env").write_text("MCP_AUTH_TOKEN=from-dotenv\n")
    config = load_config(CONFIGS / "seed-cors.yaml", load_environ(tmp_path))
    assert config.server.auth is not None and config.server.auth.token is not None
    assert config.server.auth.token.get_secret_value() == "from-dotenv"


# ---------------------------------------------------------------------------------------------
# Example files: the full config, the seed guide, Claude and Compozy formats


def test_full_config_loads_every_key(full_files: None) -> None:
    config = load_config(CONFIGS / "full.yaml", FULL_ENV)
    secure, everything, oauth, open_local = config.mcps
    assert config.server.admin.port == 6002
    assert config.server.storage.type == "sqlite"
    assert [sink.type for sink in config.server.audit.sinks] == ["sqlite", "file", "stdout", "syslog"]
    assert (
        isinstance(config.server.audit.sinks[1], FileSink)
        and config.server.audit.sinks[1].max_bytes == 10 * 1024 * 1024
    )
    assert isinstance(config.server.audit.sinks[0], SqliteSink)
    assert config.server.security.cors is not None
    assert config.server.security.cors.allowed_origins == ("https://app.example.com", "https://*.example.com")
    assert config.server.security.headers.hsts_max_age == 365 * 86400
    assert config.server.security.limits.max_header_size == 16 * 1024
    assert config.server.security.limits.max_string_length == 1_000_000
    assert secure.transport == "streamable-http" and secure.session_mode == "shared" and not secure.required
    assert secure.request_timeout == 300
    assert secure.auth is not None and secure.auth.jwt is not None
    assert secure.auth.jwt.audience == ("mcp-barbican", "https://mcp.example.com")
    assert secure.auth.jwt.required_claims == {"scope": "*", "tenant": "acme"}
    assert everything.transport == "stdio" and everything.start_timeout == 60
    assert everything.env == {"API_KEY": "full-api-key"}
    assert oauth.auth is not None and oauth.auth.oauth2 is not None
    assert open_local.auth is not None and open_local.auth.type == "none"
    assert config.server.auth is not None
    entry = config.server.auth.tokens[0]
    assert entry.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_a_dumped_oauth2_block_beside_jwt_loads_again() -> None:
    # `config check` writes every default out; the jwt-only settings at their defaults must not become errors.
    block = {
        "type": "oauth2",
        "jwt": {"jwks_url": "https://i/j", "algorithms": ["RS256"]},
        "oauth2": {"issuer": "https://as"},
    }
    dumped = AuthConfig.model_validate(block).model_dump(mode="json")
    assert AuthConfig.model_validate(dumped).oauth2 == AuthConfig.model_validate(block).oauth2


def test_a_redis_storage_block_loads_with_its_defaults_and_dumps_back() -> None:
    redis = StorageConfig.model_validate({"type": "redis", "url": "rediss://user:pw@h:6380/2"})
    assert (redis.key_prefix, redis.fail_mode.auth, redis.fail_mode.rate_limit) == ("barbican:", "closed", "open")
    dumped = StorageConfig().model_dump(mode="json")
    assert StorageConfig.model_validate(dumped) == StorageConfig(), "an sqlite block with every default loads"


def test_full_config_masked_dump_matches_golden(full_files: None) -> None:
    dumped = masked_dump(load_config(CONFIGS / "full.yaml", FULL_ENV))
    golden = yaml.safe_load((CONFIGS / "full.masked.yaml").read_text())
    assert dumped == golden


def test_masked_dump_contains_no_secret(full_files: None) -> None:
    text = json.dumps(masked_dump(load_config(CONFIGS / "full.yaml", FULL_ENV)))
    for name, secret in FULL_ENV.items():
        assert secret not in text, name
    assert hashlib.sha256(b"full-ci-token").hexdigest() not in text
    assert text.count(MASK) == 13


@pytest.mark.parametrize(
    "name",
    ["seed-ip-filtering.yaml", "seed-rate-limiting.yaml", "seed-cors.yaml", "seed-production.yaml"],
)
def test_seed_guide_examples_load(name: str) -> None:
    config = load_config(CONFIGS / name, {"MCP_AUTH_TOKEN": "t-1", "MCP_PRODUCTION_TOKEN": "t-2"})
    assert len(config.mcps) == 1


def test_seed_rate_limit_example_keeps_every_value() -> None:
    config = load_config(CONFIGS / "seed-rate-limiting.yaml", {"MCP_AUTH_TOKEN": "t"})
    limit = config.effective_security(config.mcps[0]).rate_limit
    assert limit is not None
    assert (limit.requests_per_minute, limit.requests_per_hour, limit.requests_per_day) == (100, 1000, 10000)
    assert (limit.burst_size, limit.per_ip_burst_size, limit.per_token_burst_size) == (20, 5, 10)


def test_seed_cors_example_normalizes_origins() -> None:
    config = load_config(CONFIGS / "seed-cors.yaml", {"MCP_AUTH_TOKEN": "t"})
    cors = config.effective_security(config.mcps[0]).cors
    assert cors is not None and cors.allow_credentials and cors.max_age == 86400
    assert "PUT" in cors.allowed_methods


def test_claude_style_json() -> None:
    config = load_config(CONFIGS / "claude.json", {})
    by_id = {mcp.id: mcp for mcp in config.mcps}
    assert by_id["filesystem"].transport == "stdio"
    assert by_id["filesystem"].env == {"LOG_LEVEL": "debug"}
    assert by_id["github"].transport == "streamable-http"
    assert by_id["github"].headers == {"Authorization": "Bearer unset-token"}
    assert by_id["legacy"].transport == "sse"


CLAUDE_MISTAKES = [
    pytest.param(
        '{"mcpServers": {"Bad Name": {"command": "x"}}}', "mcpServers.Bad Name", "invalid server name", id="bad-name"
    ),
    pytest.param(
        '{"mcpServers": {"a": {"command": "x", "disabled": true}}}',
        "mcpServers.a.disabled",
        "unknown key",
        id="unknown-key",
    ),
    pytest.param(
        '{"mcpServers": {"a": {"type": "ws", "url": "http://h"}}}', "mcpServers.a.type", "must be one of", id="bad-type"
    ),
    pytest.param('{"mcpServers": {"a": {"url": "ftp://h"}}}', "mcpServers.a.url", "not an http", id="bad-url"),
    pytest.param(
        '{"mcpServers": {"a": {"type": "stdio"}}}', "mcpServers.a.command", "required", id="stdio-without-command"
    ),
    pytest.param('{"mcpServers": {"a": {"command": "x"}}}', "mcpServers.a.auth", "set server.auth", id="no-auth"),
    pytest.param('{"mcpServers": []}', "mcpServers", "must be a mapping", id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), CLAUDE_MISTAKES)
def test_claude_style_mistakes_point_at_the_entry(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    error = load_error(tmp_path, text, name="claude.json")
    assert error.path == path
    assert fragment in str(error)


def test_mcps_and_mcp_servers_together_keep_ids_unique(tmp_path: Path) -> None:
    text = AUTH + "mcps: [{id: a, command: x}]\nmcpServers: {b: {command: y}}\n"
    assert [mcp.id for mcp in load(tmp_path, text).mcps] == ["a", "b"]
    error = load_error(tmp_path, AUTH + "mcps: [{id: a, command: x}]\nmcpServers: {a: {command: y}}\n")
    assert error.path == "mcpServers.a"
    assert "duplicate id 'a'" in str(error)


def test_json_is_detected_by_content(tmp_path: Path) -> None:
    config = load(tmp_path, '{"server": {"auth": {"type": "none"}}, "mcps": [{"id": "a", "command": "x"}]}')
    assert config.mcps[0].id == "a"


def test_compozy_yaml_leaves_other_keys_to_compozy(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mcp_barbican.config"):
        config = load_config(CONFIGS / "compozy" / "compozy.yaml", {"MCP_AUTH_TOKEN": "t"})
    assert [mcp.id for mcp in config.mcps] == ["secure_mcp_server"]
    assert "left to Compozy: name, version, description, workflows, models" in caplog.text


def test_same_keys_outside_compozy_yaml_are_errors(tmp_path: Path) -> None:
    text = (CONFIGS / "compozy" / "compozy.yaml").read_text()
    error = load_error(tmp_path, text, {"MCP_AUTH_TOKEN": "t"}, name="project.yaml")
    assert error.path == "name"


def test_compozy_yaml_without_mcps_is_an_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name: x\nmcpServers: {a: {command: x}}\n", name="compozy.yaml")
    assert error.path == "mcps"


def test_find_config_order(tmp_path: Path) -> None:
    assert find_config(tmp_path) is None
    (tmp_path / "compozy.yaml").write_text("mcps: []")
    assert find_config(tmp_path) == tmp_path / "compozy.yaml"
    (tmp_path / "mcp-barbican.yml").write_text("mcps: []")
    assert find_config(tmp_path) == tmp_path / "mcp-barbican.yml"
    (tmp_path / "mcp-barbican.yaml").write_text("mcps: []")
    assert find_config(tmp_path) == tmp_path / "mcp-barbican.yaml"


# ---------------------------------------------------------------------------------------------
# Normalization and defaults


def test_transport_defaults_from_command_or_url(tmp_path: Path) -> None:
    config = load(tmp_path, AUTH + "mcps: [{id: a, command: x}, {id: b, url: 'https://h/mcp'}]")
    assert [mcp.transport for mcp in config.mcps] == ["stdio", "streamable-http"]


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        pytest.param("HTTPS://App.Example.COM", "https://app.example.com", id="lowercased"),
        pytest.param("https://a.com:443", "https://a.com", id="default-port-dropped"),
        pytest.param("http://localhost:3000", "http://localhost:3000", id="port-kept"),
        pytest.param("*.example.com", "https://*.example.com", id="bare-wildcard-is-https"),
        pytest.param("https://*.example.com:8443", "https://*.example.com:8443", id="wildcard-with-port"),
        pytest.param("http://[::1]:8080", "http://[::1]:8080", id="ipv6"),
        pytest.param("*", "*", id="star"),
    ],
)
def test_cors_origins_are_normalized(origin: str, normalized: str) -> None:
    config = validate_model(McpConfig, {"id": "a", "command": "x", "security": {"cors": {"allowed_origins": [origin]}}})
    assert config.security is not None and config.security.cors is not None
    assert config.security.cors.allowed_origins == (normalized,)


def test_allowed_hosts_are_lowercased(tmp_path: Path) -> None:
    config = load(
        tmp_path, AUTH.replace("}}", "}, allowed_hosts: [Example.COM, 'MCP.example.com:8443', '::1']}") + "mcps: []"
    )
    assert config.server.allowed_hosts == ("example.com", "mcp.example.com:8443", "[::1]")


def test_unquoted_tls_versions_and_env_numbers(tmp_path: Path) -> None:
    upstream = "{id: a, url: 'https://h', tls: {min_version: 1.2, max_version: 1.3}}"
    text = AUTH + f"mcps: [{upstream}, {{id: b, command: x, env: {{PORT: 8080, DEBUG: true}}}}]"
    config = load(tmp_path, text)
    assert config.mcps[0].tls is not None and config.mcps[0].tls.min_version == "1.2"
    assert config.mcps[1].env == {"PORT": "8080", "DEBUG": "true"}


def test_naive_expiry_is_taken_as_utc(tmp_path: Path) -> None:
    tokens = "[{id: a, token: t1, expires_at: '2031-05-01T12:00:00'}, {id: b, token: t2, expires_at: 2032-01-02}]"
    text = f"server: {{auth: {{type: token, tokens: {tokens}}}}}\nmcps: []"
    config = load(tmp_path, text)
    assert config.server.auth is not None
    first, second = config.server.auth.tokens
    assert first.expires_at == datetime(2031, 5, 1, 12, tzinfo=UTC)
    assert second.expires_at == datetime(2032, 1, 2, tzinfo=UTC)


def test_token_sha256_is_lowercased_and_digest_matches_plaintext(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"t1").hexdigest()
    tokens = f"[{{id: a, sha256: '{digest.upper()}'}}, {{id: b, token: t2}}]"
    text = f"server: {{auth: {{type: token, tokens: {tokens}}}}}\nmcps: []"
    config = load(tmp_path, text)
    assert config.server.auth is not None
    assert config.server.auth.tokens[0].digest() == digest
    assert config.server.auth.tokens[1].digest() == hashlib.sha256(b"t2").hexdigest()


def test_one_credential_may_be_listed_under_its_id_in_several_blocks(tmp_path: Path) -> None:
    """The same id with the same token is one credential (one principal), so not a collision."""
    digest = hashlib.sha256(b"t1").hexdigest()
    text = (
        "server: {auth: {type: token, tokens: [{id: ci, token: t1}]}}\n"
        "mcps: [{id: a, command: x},"
        f" {{id: b, command: x, auth: {{type: token, tokens: [{{id: ci, sha256: '{digest}'}}]}}}}]"
    )
    config = load(tmp_path, text)
    assert [(format_path(loc), entry.id) for loc, entry in config.listed_tokens()] == [
        ("server.auth.tokens[0].id", "ci"),
        ("mcps[1].auth.tokens[0].id", "ci"),
    ]


def test_effective_auth_and_security(tmp_path: Path) -> None:
    text = (
        "server: {auth: {type: token, token: t},"
        " security: {ip_whitelist: ['10.0.0.0/8'], rate_limit: {requests_per_minute: 5}}}\n"
        "mcps: [{id: a, command: x}, {id: b, command: x, auth: {type: none}, security: {ip_blacklist: ['1.2.3.4']}}]"
    )
    config = load(tmp_path, text)
    a, b = config.mcps
    assert config.effective_auth(a).type == "token"
    assert config.effective_auth(b).type == "none"
    assert config.effective_security(a).ip_whitelist == ("10.0.0.0/8",)
    # A per-MCP block replaces the server default whole: nothing is inherited key by key.
    assert config.effective_security(b).ip_whitelist == ()
    assert config.effective_security(b).rate_limit is None
    assert config.mcp("b") is b and config.mcp("zzz") is None


def test_models_are_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, AUTH + "mcps: [{id: a, command: x}]")
    with pytest.raises(ValueError, match="frozen"):
        config.server.port = 1


def test_every_openssl_name_is_known_to_openssl() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for iana, openssl_name in TLS12_IANA_TO_OPENSSL.items():
        context.set_ciphers(openssl_name)
        assert openssl_name in {cipher["name"] for cipher in context.get_ciphers()}, iana
    assert "TLS_AES_128_GCM_SHA256" in TLS13_SUITES and len(TLS13_SUITES) == 5


def test_validate_model_prefixes_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_model(McpConfig, {"id": "a", "command": "x", "max_sessions": -1}, prefix=("body",))
    assert caught.value.path == "body.max_sessions"


# ---------------------------------------------------------------------------------------------
# Durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(30, 30.0, id="int"),
        pytest.param(2.5, 2.5, id="float"),
        pytest.param("30", 30.0, id="numeric-string"),
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("2d", 172800.0, id="days"),
        pytest.param("1.5h", 5400.0, id="fractional"),
        pytest.param("0", 0.0, id="zero"),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("-5s", id="negative-string"),
        pytest.param(-1, id="negative-number"),
        pytest.param("5x", id="unknown-unit"),
        pytest.param("", id="empty"),
        pytest.param("1h 30m", id="space"),
        pytest.param("s", id="unit-only"),
        pytest.param(True, id="bool"),
        pytest.param(float("inf"), id="infinite"),
        pytest.param([1], id="list"),
    ],
)
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        pytest.param(1024, 1024, id="int"),
        pytest.param("4MiB", 4 * 1024 * 1024, id="mebibytes"),
        pytest.param("512KiB", 512 * 1024, id="kibibytes"),
        pytest.param("1MB", 1_000_000, id="megabytes"),
        pytest.param("100kb", 100_000, id="kilobytes-lowercase"),
        pytest.param("1.5KiB", 1536, id="fractional"),
        pytest.param("2g", 2 * 1024**3, id="nginx-style"),
        pytest.param("10 B", 10, id="bytes-with-space"),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["-1", -1, "4XB", "MiB", True, 1.5])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


# ---------------------------------------------------------------------------------------------
# Bind checks


def bind_config(tmp_path: Path, host: str, extra: str = "") -> ProxyConfig:
    text = f"server: {{host: '{host}', auth: {{type: token, token: t}}{extra}}}\n"
    text += "mcps: [{id: a, command: x}, {id: open, command: y, auth: {type: none}}]"
    return load(tmp_path, text)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_bind_allows_auth_none_silently(tmp_path: Path, host: str) -> None:
    assert check_bind(bind_config(tmp_path, host), allow_unauthenticated=False) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "proxy.example.com"])
def test_exposed_bind_with_auth_none_needs_the_flag(tmp_path: Path, host: str) -> None:
    config = bind_config(tmp_path, host)
    with pytest.raises(ConfigError) as caught:
        check_bind(config, allow_unauthenticated=False)
    assert caught.value.path == "server.host"
    assert "--allow-unauthenticated" in str(caught.value)
    warnings = check_bind(config, allow_unauthenticated=True)
    assert any("NO authentication on: open" in warning for warning in warnings)


def test_exposed_bind_warns_without_allowed_hosts_and_tls(tmp_path: Path) -> None:
    text = "server: {host: 0.0.0.0, auth: {type: token, token: t}}\nmcps: [{id: a, command: x}]"
    warnings = check_bind(load(tmp_path, text), allow_unauthenticated=False)
    assert any("allowed_hosts" in warning for warning in warnings)
    assert any("server.tls" in warning for warning in warnings)
    quiet = "server: {host: 0.0.0.0, allowed_hosts: [h.example], trusted_proxies: [10.0.0.1],"
    quiet += " auth: {type: token, token: t}}\n"
    assert check_bind(load(tmp_path, quiet + "mcps: [{id: a, command: x}]"), allow_unauthenticated=False) == []


def test_insecure_skip_verify_is_warned_about(tmp_path: Path) -> None:
    text = AUTH + "mcps: [{id: a, url: 'https://h', tls: {insecure_skip_verify: true}}]"
    warnings = check_bind(load(tmp_path, text), allow_unauthenticated=False)
    assert warnings == ["mcps[0] (a): tls.insecure_skip_verify is true; the upstream certificate is not verified"]


# ---------------------------------------------------------------------------------------------
# Files the config names are read at load


README_SAMPLE_MCP = "{id: remote, url: 'https://mcp.example.com/mcp', tls: {ca_file: ca.pem}}"


def test_a_missing_ca_file_is_an_error_naming_its_key_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    error = load_error(tmp_path, AUTH + f"mcps: [{{id: a, command: x}}, {README_SAMPLE_MCP}]")
    assert str(error) == "mcps[1].tls.ca_file: cannot read ca.pem: No such file or directory"


def test_every_unreadable_file_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    error = load_error(tmp_path, (CONFIGS / "seed-tls.yaml").read_text(), {"MCP_AUTH_TOKEN": "t"})
    assert error.lines() == [
        f"mcps[0].tls.{key}: cannot read /path/to/{name}.pem: No such file or directory"
        for key, name in (("ca_file", "ca"), ("cert_file", "cert"), ("key_file", "key"))
    ]


def test_a_file_that_is_not_pem_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    error = load_error(tmp_path, AUTH + f"mcps: [{README_SAMPLE_MCP}]")
    assert error.path == "mcps[0].tls.ca_file" and "ca.pem holds no PEM certificate" in str(error)


def test_relative_files_are_read_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_full_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = load(tmp_path / "sub", AUTH + f"mcps: [{README_SAMPLE_MCP}]")
    assert config.mcps[0].tls is not None and config.mcps[0].tls.ca_file == "ca.pem"


def test_jwt_public_key_file_and_server_tls_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (
        "server: {auth: {type: jwt, jwt: {public_key_file: k.pem, algorithms: [RS256]}},"
        " tls: {cert_file: c.pem, key_file: k2.pem}}\nmcps: []\n"
    )
    assert load_error(tmp_path, text).lines() == [
        "server.tls.cert_file: cannot read c.pem: No such file or directory",
        "server.tls.key_file: cannot read k2.pem: No such file or directory",
        "server.auth.jwt.public_key_file: cannot read k.pem: No such file or directory",
    ]


def test_an_audit_file_in_an_unwritable_place_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    error = load_error(tmp_path, server("audit: {sinks: [{type: file, path: a-file/audit.jsonl}]}"))
    assert error.path == "server.audit.sinks[0].path" and "not a writable directory" in str(error)


# ---------------------------------------------------------------------------------------------
# Compozy's own MCP fields


def test_compozy_fields_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = AUTH + "mcps: [{id: fs, resource: filesystem, proto: 2025-03-26, max_sessions: 0, command: 'npx -y srv'}]"
    with caplog.at_level(logging.WARNING):
        config = load(tmp_path, text, name="compozy.yaml")
    (fs,) = config.mcps
    assert (fs.resource, fs.proto, fs.max_sessions) == ("filesystem", "2025-03-26", 100)
    assert (fs.command, fs.args, fs.transport) == ("npx", ("-y", "srv"), "stdio")
    assert "max_sessions: 0" in caplog.text and "'fs'" in caplog.text
    dumped = masked_dump(config)["mcps"][0]
    assert dumped["resource"] == "filesystem" and dumped["proto"] == "2025-03-26"


@pytest.mark.parametrize(
    ("fields", "command", "args"),
    [
        pytest.param("command: 'npx -y \"my server\"'", "npx", ("-y", "my server"), id="split-like-a-shell"),
        pytest.param("command: 'npx -y', args: [srv]", "npx -y", ("srv",), id="with-args-one-executable"),
        pytest.param("command: '/usr/bin/srv'", "/usr/bin/srv", (), id="one-word"),
    ],
)
def test_one_string_command(tmp_path: Path, fields: str, command: str, args: tuple[str, ...]) -> None:
    (mcp_config,) = load(tmp_path, mcp(fields)).mcps
    assert (mcp_config.command, mcp_config.args) == (command, args)


def test_unbalanced_quotes_in_command_name_the_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, mcp("command: 'npx \"srv'"))
    assert error.path == "mcps[0].command" and "cannot split" in str(error)


def test_an_unknown_proto_is_an_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, mcp("command: x, proto: 2024-01-01"))
    assert error.path == "mcps[0].proto" and "unsupported protocol version '2024-01-01'" in str(error)


# ---------------------------------------------------------------------------------------------
# .env beside the config file, durations, schema docs


def test_dotenv_beside_the_config_file_is_read_after_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, config_dir = tmp_path / "cwd", tmp_path / "conf"
    cwd.mkdir()
    config_dir.mkdir()
    (cwd / ".env").write_text("BOTH=cwd\n")
    (config_dir / ".env").write_text("BOTH=config\nONLY_CONFIG=config\nSET=config\n")
    monkeypatch.setenv("SET", "process")
    for name in ("BOTH", "ONLY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    environ = load_environ(cwd, config_dir)
    assert (environ["BOTH"], environ["ONLY_CONFIG"], environ["SET"]) == ("cwd", "config", "process")


def test_masked_dump_shows_durations_as_written(tmp_path: Path) -> None:
    dumped = masked_dump(load(tmp_path, mcp("command: x, start_timeout: 10m")))
    assert dumped["mcps"][0]["start_timeout"] == "600s"
    assert dumped["server"]["security"]["auth_failure_ban"]["ban_time"] == "600s"


def test_checked_in_configuration_docs_are_current() -> None:
    from mcp_barbican.config import config_schema
    from mcp_barbican.config.schema_docs import render_markdown

    docs = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert docs.read_text() == render_markdown(config_schema()), (
        "docs/configuration.md is stale: python -m mcp_barbican config schema --format markdown > docs/configuration.md"
    )


def test_a_jwt_public_key_file_must_hold_a_usable_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    error = load_error(tmp_path, jwt("public_key_file: k.pem, algorithms: [RS256]"))
    assert error.path == "mcps[0].auth.jwt.public_key_file" and "it holds a private key" in str(error)
