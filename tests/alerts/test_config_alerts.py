"""`server.alerts`: every mistake names its key path, and a webhook URL (a secret) is never echoed."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_barbican.config import ServerConfig, validate_model
from mcp_barbican.exceptions import ConfigError

SECRET_URL = "https://hooks.slack.com/services/T0/B0/s3cr3t-path"


def alerts(*webhooks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"alerts": {"webhooks": list(webhooks), **extra}}


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (
            alerts({"url": "ftp://hooks.slack.com/s3cr3t-path"}),
            "alerts.webhooks[0].url",
            "is not an http:// or https://",
        ),
        (alerts({"url": "https://user:s3cr3t-path@h.example/x"}), "alerts.webhooks[0].url", "credentials in the URL"),
        (alerts({"url": SECRET_URL, "format": "teams"}), "alerts.webhooks[0].format", ""),
        (alerts({"url": SECRET_URL, "events": ["bans"]}), "alerts.webhooks[0].events[0]", ""),
        (alerts({"url": SECRET_URL, "events": []}), "alerts.webhooks[0].events", "at least one kind"),
        (alerts({"url": SECRET_URL, "events": ["ban", "ban"]}), "alerts.webhooks[0].events", "names a kind twice"),
        (alerts({"url": SECRET_URL, "min_interval": "0s"}), "alerts.webhooks[0].min_interval", ""),
        (alerts({"url": SECRET_URL, "max_attempts": 0}), "alerts.webhooks[0].max_attempts", ""),
        (alerts({"url": SECRET_URL, "headers": {"Content-Type": "x"}}), "alerts.webhooks[0].headers.Content-Type", ""),
        (alerts({"url": SECRET_URL, "headers": {"X-Token": "a\nb"}}), "alerts.webhooks[0].headers.X-Token", ""),
        (alerts({"url": SECRET_URL, "retries": 3}), "alerts.webhooks[0].retries", ""),
        (alerts({"url": SECRET_URL}, {"url": SECRET_URL + "2"}), "alerts.webhooks[1].name", "distinct name"),
        (alerts({"url": SECRET_URL}, auth_failures={"count": 0}), "alerts.auth_failures.count", ""),
        (alerts({"url": SECRET_URL}, instance=""), "alerts.instance", ""),
    ],
)
def test_mistakes_name_their_key_and_never_the_url(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_model(ServerConfig, data, prefix=("server",))
    assert caught.value.path == f"server.{path}"
    assert message in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_defaults() -> None:
    webhook = ServerConfig.model_validate(alerts({"url": SECRET_URL})).alerts.webhooks[0]
    assert webhook.label == "hooks.slack.com" and webhook.format == "json" and webhook.min_interval == 60
    assert webhook.events == ("ban", "auth_failures", "upstream_down", "tool_changed", "scan_finding")
    assert (webhook.timeout, webhook.max_attempts) == (10, 5)
