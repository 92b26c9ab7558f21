"""Webhooks the proxy tells of bans, bursts of authentication failures, upstreams going down, tool definition
changes and scanner findings (`server.alerts`). Every webhook URL passes `server.egress`."""

from __future__ import annotations

from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import (
    Model,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    SecretHeaderValue,
    check_http_url,
    settable_header_name,
)

__all__ = [
    "ALERT_KINDS",
    "AlertKind",
    "AlertsConfig",
    "AuthBurstConfig",
    "WebhookConfig",
    "webhook_host",
    "webhook_origin",
]

AlertKind = Literal["ban", "auth_failures", "upstream_down", "tool_changed", "scan_finding"]
ALERT_KINDS: tuple[AlertKind, ...] = ("ban", "auth_failures", "upstream_down", "tool_changed", "scan_finding")


def _check_url(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    try:
        check_http_url(text)  # the same check as every other URL key
    except ValueError as exc:  # without the URL itself: it is a secret
        raise ValueError(str(exc).replace(repr(text), "the URL")) from None
    return value


#: The URL is a secret: a Slack (or Teams, Discord...) webhook URL carries its credential in the path.
WebhookUrl = Annotated[SecretStr, AfterValidator(_check_url)]
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


def webhook_host(url: str) -> str:
    """What labels may show of a webhook URL: its host (the path may hold a credential)."""
    return urlsplit(url).hostname or "?"


def webhook_origin(url: str) -> str:
    """What logs may show of a webhook URL: scheme, host and port, the path elided."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."


class WebhookConfig(Model):
    """One receiver: `json` gets the documented object, `slack` a Slack-compatible `{"text": ...}`.

    Each kind goes out at most once per `min_interval`; what happens meanwhile is counted and summed up in
    the next message. A delivery is tried `max_attempts` times with exponential backoff, each try given `timeout`.
    """

    url: WebhookUrl
    #: Names the webhook in logs and metrics (default: the URL's host).
    name: NonEmptyStr | None = None
    format: Literal["json", "slack"] = "json"
    events: tuple[AlertKind, ...] = ALERT_KINDS
    min_interval: PositiveDuration = 60.0
    #: Sent with every delivery, e.g. an Authorization header (the values are secrets, masked in dumps).
    headers: dict[Annotated[str, settable_header_name(_FORBIDDEN_HEADERS)], SecretHeaderValue] = Field(
        default_factory=dict
    )
    timeout: PositiveDuration = 10.0
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 5

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.events:
            raise LocatedError(("events",), "name at least one kind, or remove the webhook")
        if len(set(self.events)) != len(self.events):
            raise LocatedError(("events",), "names a kind twice")
        return self

    @property
    def label(self) -> str:
        return self.name or webhook_host(self.url.get_secret_value())


class AuthBurstConfig(Model):
    """`count` authentication failures within `window` (on one replica) make one `auth_failures` alert."""

    count: PositiveInt = 10
    window: PositiveDuration = 60.0


class AlertsConfig(Model):
    """Webhooks and what makes an alert; `instance` names this proxy in every message (default: the host name)."""

    webhooks: tuple[WebhookConfig, ...] = ()
    auth_failures: AuthBurstConfig = AuthBurstConfig()
    instance: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        seen: dict[str, int] = {}
        for index, webhook in enumerate(self.webhooks):
            if webhook.label in seen:
                raise LocatedError(
                    ("webhooks", index, "name"),
                    f"{webhook.label!r} also names webhooks[{seen[webhook.label]}]; give each a distinct name",
                )
            seen[webhook.label] = index
        return self
