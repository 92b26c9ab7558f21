"""One upstream MCP server and the policy in front of it (`mcps[]`)."""

from __future__ import annotations

import logging
import re
import shlex
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from mcp_barbican.config.auth import AuthConfig
from mcp_barbican.config.authorization import AuthorizationConfig
from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import (
    HeaderValue,
    HttpUrl,
    McpId,
    Model,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    scalar_to_str,
    settable_header_name,
)
from mcp_barbican.config.integrity import IntegrityConfig
from mcp_barbican.config.security import SecurityConfig
from mcp_barbican.config.tls import UpstreamTLSConfig
from mcp_barbican.config.upstream_auth import UpstreamAuthConfig

__all__ = ["UPSTREAM_PROTOCOL_VERSIONS", "McpConfig", "ToolFilter"]

# One logger for the package: its log lines keep the name they had before config became a package.
logger = logging.getLogger("mcp_barbican.config")

#: Protocol versions the proxy can offer an upstream in its own `initialize` (`mcps[].proto`).
UPSTREAM_PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The proxy owns framing and the MCP session headers of the upstream connection.
_FORBIDDEN_UPSTREAM_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "proxy-connection"}
    | {"te", "trailer", "upgrade", "mcp-session-id", "mcp-protocol-version"}
)
_DEFAULT_MAX_SESSIONS = 100


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
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


class ToolFilter(Model):
    """Which tools of an MCP are visible and callable (glob patterns)."""

    mode: Literal["allow", "block"]
    list: tuple[NonEmptyStr, ...]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.list:
            raise LocatedError(("list",), "list at least one tool name or glob pattern")
        return self


class McpConfig(Model):
    """One upstream MCP server and the policy in front of it."""

    id: McpId
    description: str = ""
    #: Compozy's resource name for this MCP: kept and shown, not used for routing (the id is).
    resource: NonEmptyStr | None = None
    transport: Literal["stdio", "sse", "streamable-http"]
    url: HttpUrl | None = None
    command: NonEmptyStr | None = None
    args: tuple[Annotated[str, BeforeValidator(scalar_to_str)], ...] = ()
    env: dict[Annotated[str, AfterValidator(_check_env_name)], HeaderValue] = Field(default_factory=dict)
    cwd: NonEmptyStr | None = None
    headers: dict[Annotated[str, settable_header_name(_FORBIDDEN_UPSTREAM_HEADERS)], HeaderValue] = Field(
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
    authorization: AuthorizationConfig | None = None
    auth: AuthConfig | None = None
    security: SecurityConfig | None = None
    tls: UpstreamTLSConfig | None = None
    upstream_auth: UpstreamAuthConfig | None = None
    #: Tool pins, the definition scanner and argument checks (None: `server.integrity`).
    integrity: IntegrityConfig | None = None

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
            raise LocatedError(
                (), "url and command are mutually exclusive (url for sse/streamable-http, command for stdio)"
            )
        if self.transport == "stdio":
            self._check_stdio()
        else:
            self._check_http()
        return self

    def _check_stdio(self) -> None:
        if self.command is None:
            raise LocatedError(("command",), "required for transport stdio")
        for name in ("headers", "tls", "upstream_auth"):
            if getattr(self, name):
                raise LocatedError((name,), "only used with transports sse and streamable-http")

    def _check_http(self) -> None:
        if self.url is None:
            raise LocatedError(("url",), f"required for transport {self.transport}")
        for name in ("command", "args", "env", "cwd"):
            if getattr(self, name):
                raise LocatedError((name,), "only used with transport stdio")
        self._check_upstream_auth()
        if self.tls is not None and self.tls.enabled and urlsplit(self.url).scheme != "https":
            raise LocatedError(
                ("tls",), "tls is enabled but url is not https://; use https:// or set tls.enabled: false"
            )

    def _check_upstream_auth(self) -> None:
        upstream = self.upstream_auth
        if upstream is None:
            return
        configured = {name.lower() for name in self.headers}
        for name in upstream.identity_headers:
            if name.lower() in configured:
                raise LocatedError(("upstream_auth", "identity_headers", name), "also set in headers: keep one")
        for name in self.headers:
            if upstream.type == "token_exchange" and name.lower() == "authorization":
                raise LocatedError(("headers", name), "token_exchange sets Authorization upstream: remove it here")


def _split_command(data: dict[str, Any]) -> dict[str, Any]:
    """Compozy's one-string `command: "npx -y server"`, split like a shell when `args` is absent."""
    command = data.get("command")
    if "args" in data or not isinstance(command, str) or not any(char in command for char in " \t\n'\""):
        return data
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise LocatedError(("command",), f"cannot split {command!r} like a shell: {exc}") from None
    if not words:
        return data
    return {**data, "command": words[0], "args": words[1:]}
