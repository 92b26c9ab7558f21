"""Value checks and the reusable field types (`Duration`, `Size`, `McpId`, ...) of the config models."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from mcp_barbican.config.units import parse_duration, parse_size

__all__ = [
    "Duration",
    "HEADER_NAME",
    "HeaderValue",
    "HttpUrl",
    "IpOrNetwork",
    "MCP_ID",
    "MCP_ID_RULE",
    "McpId",
    "Model",
    "NonEmptyStr",
    "NonNegativeInt",
    "Port",
    "PositiveDuration",
    "PositiveInt",
    "SecretHeaderValue",
    "Size",
    "TokenSecret",
    "VISIBLE_ASCII",
    "check_header_name",
    "check_hostname",
    "check_http_url",
    "check_port_text",
    "no_control_chars",
    "scalar_to_str",
    "settable_header_name",
    "split_host_port",
]

MCP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MCP_ID_RULE = "use 1-64 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOST_LABELS = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?")
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


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


def scalar_to_str(value: object) -> object:
    # `PORT: 8080` in an env block means the string "8080", as a shell would see it.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


def no_control_chars(value: str) -> str:
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


def check_hostname(host: str, original: str) -> None:
    if not (_is_ip(host) or _HOST_LABELS.fullmatch(host)):
        raise ValueError(f"{original!r} is not a valid host name or IP address")


def split_host_port(text: str, original: str) -> tuple[str, str]:
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


def check_port_text(port: str, original: str) -> None:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{original!r} has an invalid port (1-65535)")


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
    if not MCP_ID.fullmatch(value):
        raise ValueError(f"invalid id {value!r}: {MCP_ID_RULE}")
    # The aggregated /mcp endpoint names tools `{id}__{tool}`; "__" in an id would be ambiguous.
    if "__" in value:
        raise ValueError(f"invalid id {value!r}: '__' is reserved as the separator of aggregated tool names")
    if value.endswith("_"):  # `a_` + `__` + `x` would split as `a` + `__` + `_x`
        raise ValueError(f"invalid id {value!r}: it may not end with '_' (aggregated names are '{{id}}__{{name}}')")
    return value


def check_header_name(value: str) -> str:
    if not HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def settable_header_name(reserved: frozenset[str]) -> AfterValidator:
    """A header name a config may set: valid, and none of `reserved` (lower case), which the proxy sets itself."""

    def check(value: str) -> str:
        check_header_name(value)
        if value.lower() in reserved:
            raise ValueError(f"header {value!r} is set by the proxy and cannot be configured")
        return value

    return AfterValidator(check)


def _check_token_secret(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    if not secret:
        raise ValueError("must not be empty")
    if not VISIBLE_ASCII.fullmatch(secret):
        raise ValueError("must be printable ASCII without spaces (it travels in an HTTP header)")
    return value


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
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
HeaderValue = Annotated[str, BeforeValidator(scalar_to_str), AfterValidator(no_control_chars)]


def _check_secret_header_value(value: SecretStr) -> SecretStr:
    no_control_chars(value.get_secret_value())
    return value


#: A header value that is a credential (an API key, a bearer token): masked wherever the config is shown.
SecretHeaderValue = Annotated[SecretStr, BeforeValidator(scalar_to_str), AfterValidator(_check_secret_header_value)]
TokenSecret = Annotated[SecretStr, AfterValidator(_check_token_secret)]
#: The `HttpUrl` check, for a URL kept as a secret.
check_http_url = _check_http_url
McpId = Annotated[str, AfterValidator(_check_mcp_id)]


class Model(BaseModel):
    """Base of every config model: unknown keys are errors and a loaded config is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
