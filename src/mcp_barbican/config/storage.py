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
    "AuditConfig",
    "AuditSink",
    "FailMode",
    "FileSink",
    "RedisSink",
    "SqliteSink",
    "StdoutSink",
    "StorageConfig",
    "SyslogSink",
]

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
    """What a Redis store does while Redis is unreachable (its change channel is down or a command fails).

    `rate_limit`: `open` admits requests whose buckets cannot be taken, `closed` refuses them (429).
    `auth` is about tokens issued through the admin API (configured tokens, JWTs and OAuth do not
    depend on the store): `closed` refuses a request presenting one with 503 `storage_unavailable`,
    since a revocation may have been missed; `open` accepts the issued tokens last heard of (a token
    known as revoked or expired stays refused). Dynamic IP rules and bans: the last-known set stays
    enforced in both modes. Either way admin writes answer 503 until Redis returns, each decision is
    counted (`mcp_barbican_storage_outage_decisions_total`), each feature logs one line per outage, and
    everything catches up when Redis returns, without a restart.
    """

    auth: Literal["closed", "open"] = "closed"
    rate_limit: Literal["open", "closed"] = "open"


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


class RedisSink(Model):
    """Audit events on a Redis stream of the state store's Redis (needs `server.storage.type: redis`), one entry
    per event (field `event`, its JSON), shared by every replica and read by /admin/audit. `stream` defaults to
    `{key_prefix}audit`; `max_len` caps it approximately (oldest entries trimmed). While Redis is unreachable
    up to `max_pending` events wait in memory and are written when it returns; beyond that the oldest are
    dropped and counted (`mcp_barbican_audit_events_failed_total`)."""

    type: Literal["redis"]
    stream: NonEmptyStr | None = None
    max_len: PositiveInt = 1_000_000
    max_pending: PositiveInt = 100_000


AuditSink = Annotated[StdoutSink | FileSink | SyslogSink | SqliteSink | RedisSink, Field(discriminator="type")]


class AuditConfig(Model):
    """The audit trail: sinks, argument handling and queue size."""

    sinks: tuple[AuditSink, ...] = ()
    arguments: Literal["redact", "hash", "keep"] = "redact"
    queue_size: PositiveInt = 10000
