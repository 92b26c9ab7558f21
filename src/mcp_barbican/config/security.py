"""Network-level protections of an MCP (`security:`): rate limits, CORS, headers, size limits, bans."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Self

from pydantic import AfterValidator, Field, field_validator, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import (
    HEADER_NAME,
    Duration,
    IpOrNetwork,
    Model,
    PositiveDuration,
    PositiveInt,
    Size,
    check_header_name,
    check_hostname,
    check_port_text,
    no_control_chars,
    split_host_port,
)

__all__ = ["BanConfig", "CorsConfig", "HeadersConfig", "LimitsConfig", "RateLimitConfig", "SecurityConfig"]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _check_method(value: str) -> str:
    method = value.strip().upper()
    if not HEADER_NAME.fullmatch(method):
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
    host, port = split_host_port(rest.lower(), value)
    return _join_origin(scheme, _check_origin_host(host, value), port, value)


def _check_origin_host(host: str, original: str) -> str:
    labels = host.removeprefix("*.")
    if "*" in labels:
        raise ValueError(f"origin {original!r}: a wildcard may only be the whole leftmost label (*.example.com)")
    if host.startswith("*.") and "." not in labels.rstrip("."):
        raise ValueError(f"origin {original!r}: a wildcard needs a domain of at least two labels")
    check_hostname(labels.strip("[]"), original)
    return host


def _join_origin(scheme: str, host: str, port: str, original: str) -> str:
    if not port:
        return f"{scheme}://{host}"
    check_port_text(port, original)
    # Browsers omit the default port from Origin, so a configured one would never match.
    if _DEFAULT_PORTS.get(scheme) == str(int(port)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


class RateLimitConfig(Model):
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
                raise LocatedError((burst,), f"needs {rate} (a burst is the bucket size of that rate)")
        return self


class CorsConfig(Model):
    """CORS policy; origins are normalized to lowercase `scheme://host[:port]`."""

    enabled: bool = True
    allowed_origins: tuple[Annotated[str, AfterValidator(_normalize_origin)], ...] = ()
    allowed_methods: tuple[Annotated[str, AfterValidator(_check_method)], ...] = ("GET", "POST", "DELETE", "OPTIONS")
    allowed_headers: tuple[Annotated[str, AfterValidator(check_header_name)], ...] = (
        "Content-Type",
        "Authorization",
        "Mcp-Session-Id",
        "MCP-Protocol-Version",
        "Last-Event-ID",
    )
    exposed_headers: tuple[Annotated[str, AfterValidator(check_header_name)], ...] = ("Mcp-Session-Id",)
    allow_credentials: bool = False
    max_age: Duration = 600.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.allow_credentials and "*" in self.allowed_origins:
            raise LocatedError(
                ("allowed_origins", self.allowed_origins.index("*")),
                "'*' cannot be combined with allow_credentials: true; list the origins instead",
            )
        return self


class HeadersConfig(Model):
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
        return no_control_chars(value)


class LimitsConfig(Model):
    """Request size limits (413 / 431 / 400 when exceeded)."""

    max_body_size: Size = 4 * 1024 * 1024
    max_header_size: Size = 16384
    max_json_depth: PositiveInt = 64
    max_string_length: Size | None = None


class BanConfig(Model):
    """fail2ban-like ban of an address after repeated authentication failures."""

    enabled: bool = True
    max_failures: PositiveInt = 5
    find_time: PositiveDuration = 600.0
    ban_time: PositiveDuration = 600.0
    #: IPv6 addresses count per network of this prefix length (one host owns a /64), for bans and per-IP limits.
    ipv6_prefix: Annotated[int, Field(ge=1, le=128)] = 64
    #: Addresses whose failures never ban (fail2ban's ignoreip).
    ignore: tuple[IpOrNetwork, ...] = ("127.0.0.1", "::1")


class SecurityConfig(Model):
    """Network-level protections of one MCP (or the server default)."""

    ip_whitelist: tuple[IpOrNetwork, ...] = ()
    ip_blacklist: tuple[IpOrNetwork, ...] = ()
    rate_limit: RateLimitConfig | None = None
    cors: CorsConfig | None = None
    headers: HeadersConfig = HeadersConfig()
    limits: LimitsConfig = LimitsConfig()
    auth_failure_ban: BanConfig = BanConfig()
