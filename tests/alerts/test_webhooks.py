"""The alerts in process: a name the egress refuses is a counted failure with no retry, a reload keeps
the throttles of the webhooks it leaves alone, and the feed's records reach only the kinds asked for."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mcp_barbican import egress
from mcp_barbican.alerts import Alerts, Batch
from mcp_barbican.config import AlertsConfig, EgressConfig

pytestmark = pytest.mark.anyio

BAN = {"type": "ban", "action": "ban", "success": True, "resource": "203.0.113.7"}


@pytest.fixture
def refusals() -> Iterator[list[str]]:
    """An egress that refuses loopback; yields the targets its refusals report."""
    reported: list[str] = []
    config = EgressConfig(deny=("127.0.0.0/8", "::1/128"))
    previous = egress.install(egress.Egress(config, on_refused=lambda target, *_: reported.append(target)))
    yield reported
    egress.install(previous)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_refused_address_is_a_counted_failure_without_retries_and_the_url_path_stays_secret(
    host: str, refusals: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://{host}:9/services/T0/B0/s3cr3t"
    alerts = Alerts(AlertsConfig.model_validate({"webhooks": [{"url": url, "max_attempts": 5}]}))
    try:
        started = time.monotonic()
        delivered = await alerts.webhooks[0].deliver(Batch("ban", 1, [BAN]))
        assert not delivered
        assert time.monotonic() - started < 0.9, "a refusal is not tried again (no backoff)"
        assert alerts.failed == {(host, "ban"): 1} and alerts.sent == {}
        assert refusals == [f"http://{host}:9/..."]
        assert "refused" in caplog.text and "s3cr3t" not in caplog.text
    finally:
        await alerts.aclose()


def webhooks(*urls: str, interval: str = "60s") -> AlertsConfig:
    return AlertsConfig.model_validate({"webhooks": [{"url": url, "min_interval": interval} for url in urls]})


async def test_a_reload_keeps_the_throttles_of_unchanged_webhooks() -> None:
    alerts = Alerts(webhooks("https://a.example/x", "https://b.example/x"))
    kept, changed = alerts.webhooks
    kept.throttles["ban"].last_sent = 5.0
    alerts.configure(webhooks("https://a.example/x", "https://c.example/x"))
    assert alerts.webhooks[0] is kept and kept.throttles["ban"].last_sent == 5.0
    assert alerts.webhooks[1] is not changed and alerts.webhooks[1].label == "c.example"
    alerts.configure(webhooks())
    assert alerts.webhooks == [] and not alerts.enabled
    await alerts.aclose()


async def test_records_reach_the_kinds_each_webhook_asks_for() -> None:
    config = AlertsConfig.model_validate(
        {
            "webhooks": [
                {"url": "https://a.example/x", "events": ["ban"]},
                {"url": "https://b.example/x", "events": ["auth_failures"]},
            ],
            "auth_failures": {"count": 2, "window": "10s"},
        }
    )
    alerts = Alerts(config)
    failure = {"type": "authentication", "action": "authenticate", "success": False, "remote_addr": "198.51.100.9"}
    for record in (BAN, failure, {"type": "rate_limit", "action": "request", "success": False}, failure):
        alerts.observe(record)
    bans, bursts = (webhook.throttles for webhook in alerts.webhooks)
    assert bans["ban"].count == 1 and list(bans) == ["ban"]
    assert bursts["auth_failures"].count == 1 and list(bursts) == ["auth_failures"]
    assert bursts["auth_failures"].events[0]["details"]["remote_addrs"] == ["198.51.100.9"]
    await alerts.aclose()
