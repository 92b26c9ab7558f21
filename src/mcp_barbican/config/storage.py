"""Where state lives (`server.storage`) and where the audit trail goes (`server.audit`)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import (
    Model,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Size,
    check_hostname,
    check_port_text,
    split_host_port,
)

__all__ = [
    "AUTH_OPEN_UNAVAILABLE",
    "AuditConfig",
    "AuditSink",
    "FailMode",
    "FileSink",
    "SqliteSink",
    "StdoutSink",
    "StorageConfig",
    "SyslogSink",
]

#: Why `fail_mode.auth: open` is refused: nothing reads authentication state past an outage yet.
AUTH_OPEN_UNAVAILABLE = "open is not available yet (issued tokens and rules keep their last-known state)"
_SYSLOG_FACILITIES = frozenset(
    {"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp"}
    | {f"local{n}" for n in range(8)}
)


def _check_syslog_address(value: str) -> str:
    text = value.strip()
    if text.startswith("/"):
        return text
    host, port = split_host_port(text.lower(), value)
    if port or text.endswith(":"):
        check_port_text(port, value)
    check_hostname(host.strip("[]"), value)
    return text


class FailMode(Model):
    """What a Redis store does while Redis is unreachable, per feature.

    `rate_limit`: `open` admits requests whose buckets cannot be taken, `closed` refuses them (429); a log
    line tells each outage. `auth`: `closed` (the only value yet) means admin writes of tokens, rules and
    registrations answer 503; the data plane keeps the issued tokens and rules it last heard of, and
    catches up when Redis returns. `open` is refused until an outage policy for authentication exists.
    """

    auth: Literal["closed", "open"] = "closed"
    rate_limit: Literal["open", "closed"] = "open"

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, value: str) -> str:
        if value == "open":
            raise ValueError(AUTH_OPEN_UNAVAILABLE)
        return value


class StorageConfig(Model):
    """Where state (buckets, bans, tokens, registry) lives: `memory`, `sqlite` (`path`) or `redis` (`url`,
    `key_prefix`, `fail_mode`), the last shared by replicas."""

    type: Literal["memory", "sqlite", "redis"] = "sqlite"
    path: NonEmptyStr = ".mcp-barbican/state.db"
    url: SecretStr | None = None
    key_prefix: str = "barbican:"
    fail_mode: FailMode = FailMode()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type != "redis":
            # compared with the defaults, not by presence: a dumped config (`config check`) writes every default
            for key in ("url", "key_prefix", "fail_mode"):
                if getattr(self, key) != StorageConfig.model_fields[key].default:
                    raise LocatedError((key,), "only used with type redis")
            return self
        if self.url is None:
            raise LocatedError(("url",), "required with type redis (redis://host:6379/0 or rediss://...)")
        scheme = self.url.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss"):
            raise LocatedError(("url",), "must start with redis:// or rediss://")
        return self


class StdoutSink(Model):
    """Audit events as JSON lines on stdout."""

    type: Literal["stdout"]


class FileSink(Model):
    """Audit events as JSON lines in a size-rotated file."""

    type: Literal["file"]
    path: NonEmptyStr
    max_bytes: Size = 10 * 1024 * 1024
    backups: NonNegativeInt = 5


class SyslogSink(Model):
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


class SqliteSink(Model):
    """Audit events in SQLite (queryable through /admin/audit); path None means the default."""

    type: Literal["sqlite"]
    path: NonEmptyStr | None = None


AuditSink = Annotated[StdoutSink | FileSink | SyslogSink | SqliteSink, Field(discriminator="type")]


class AuditConfig(Model):
    """The audit trail: sinks, argument handling and queue size."""

    sinks: tuple[AuditSink, ...] = ()
    arguments: Literal["redact", "hash", "keep"] = "redact"
    queue_size: PositiveInt = 10000
