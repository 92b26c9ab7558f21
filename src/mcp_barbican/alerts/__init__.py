"""Alerts: webhooks told of bans, bursts of authentication failures, upstreams down, tool changes, findings."""

from mcp_barbican.alerts.rules import AuthBurst, Batch, Throttle, backoff, classify, json_payload, slack_payload
from mcp_barbican.alerts.webhooks import AlertCounts, Alerts, Webhook, check_webhook_urls

__all__ = [
    "AlertCounts",
    "Alerts",
    "AuthBurst",
    "Batch",
    "Throttle",
    "Webhook",
    "backoff",
    "check_webhook_urls",
    "classify",
    "json_payload",
    "slack_payload",
]
