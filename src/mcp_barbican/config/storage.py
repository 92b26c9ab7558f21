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
    "REDIS_UNAVAILABLE",
    "AuditConfig",
    "AuditSink",
    "FileSink",
    "SqliteSink",
    "StdoutSink",
    "StorageConfig",
    "SyslogSink",
]

#: Why `storage.type: redis` is refused, by `config check` and `serve` alike.
REDIS_UNAVAILABLE = "storage type redis is not available in this build yet; use sqlite (the default) or memory"
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


class StorageConfig(Model):
    """Where state (buckets, bans, tokens, registry) lives."""

    type: Literal["memory", "sqlite", "redis"] = "sqlite"
    path: NonEmptyStr = ".mcp-barbican/state.db"
    url: SecretStr | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == "redis":
            raise LocatedError(("type",), REDIS_UNAVAILABLE)
        if self.url is not None:
            raise LocatedError(("url",), "only used with type redis")
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
