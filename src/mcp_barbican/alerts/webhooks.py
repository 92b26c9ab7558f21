"""Alert webhooks: the event feed's listener, one sender task per webhook, deliveries through the egress.

`Alerts.observe` runs synchronously on the audit writer for every security event and only updates
bounded state (one `Throttle` per webhook and kind, the burst's last few failures): nothing a request
waits for. Each webhook's task sends what its throttles let go, tries a delivery `max_attempts` times
with exponential backoff (`rules.backoff`), counts deliveries and failures per kind, and logs a failing
webhook once per outage (and once when it delivers again). Every URL goes through the process's egress
(`egress.installed()`): a refusal is counted as a failure and not tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from mcp_barbican import egress
from mcp_barbican.alerts.rules import AUTH_FAILURE, AuthBurst, Batch, Throttle, backoff, json_payload, slack_payload
from mcp_barbican.alerts.rules import classify as classify_record
from mcp_barbican.config import AlertKind, AlertsConfig, WebhookConfig, webhook_origin
from mcp_barbican.egress import EgressRefused, host_address
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.logs import log_unexpected

__all__ = ["AlertCounts", "Alerts", "Webhook", "check_webhook_urls"]

logger = logging.getLogger(__name__)

#: Deliveries and failures by (webhook name, kind): a table the metrics read (bounded by the configured webhooks).
AlertCounts = dict[tuple[str, str], int]
_PURPOSE: Final = "alert webhooks"


def check_webhook_urls(config: AlertsConfig) -> None:
    """Refuse at start-up (ConfigError naming the key) a webhook URL whose host is an address egress refuses.

    Host names are checked when they are resolved, at each delivery (DNS may answer differently later).
    """
    policy = egress.installed().policy
    for index, webhook in enumerate(config.webhooks):
        address = host_address(urlsplit(webhook.url.get_secret_value()).hostname or "")
        reason = None if address is None else policy.refusal(address)
        if reason is not None:
            raise ConfigError(
                f"webhook {webhook.label!r} is refused by server.egress ({reason})",
                path=f"server.alerts.webhooks[{index}].url",
            )


class Webhook:
    """One receiver's throttles and its sender task."""

    def __init__(self, config: WebhookConfig, alerts: Alerts) -> None:
        self.config = config
        self.label = config.label
        #: What logs and refusals name: the URL without its path (a Slack webhook's path is its credential).
        self.shown = webhook_origin(config.url.get_secret_value())
        self.alerts = alerts
        self.throttles: dict[str, Throttle] = {kind: Throttle(kind, config.min_interval) for kind in config.events}
        self.failing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, kind: AlertKind, record: Mapping[str, Any]) -> None:
        throttle = self.throttles.get(kind)
        if throttle is not None:
            throttle.add(record)
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"alerts-{self.label}")

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the sender (a delivery under way is dropped); the task, to await if the caller can."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def aclose(self) -> None:
        task = self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            for throttle in self.throttles.values():
                batch = throttle.take(now)
                if batch is not None:
                    try:
                        await self.deliver(batch)
                    except Exception:
                        log_unexpected(logger, "alert webhook %s: a %s delivery failed", self.label, batch.kind)
            dues = [due for throttle in self.throttles.values() if (due := throttle.due_at()) is not None]
            wait = max(0.0, min(dues) - time.monotonic()) if dues else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def body(self, batch: Batch) -> dict[str, Any]:
        instance = self.alerts.instance
        if self.config.format == "slack":
            return slack_payload(batch, instance)
        return json_payload(batch, instance, time.time())

    async def deliver(self, batch: Batch) -> bool:
        """Try `max_attempts` times; count and (once per outage) log the outcome."""
        body = self.body(batch)
        headers = {name: value.get_secret_value() for name, value in self.config.headers.items()}
        error = ""
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                status = await self._post(body, headers)
            except EgressRefused as exc:
                error = str(exc)
                break  # the policy answers the same way to another try
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
            else:
                if 200 <= status < 300:
                    self._count(self.alerts.sent, batch.kind)
                    if self.failing:
                        self.failing = False
                        logger.info("alert webhook %s delivers again", self.label)
                    return True
                error = f"HTTP {status}"
            if attempt < self.config.max_attempts:
                await asyncio.sleep(backoff(attempt))
        self._count(self.alerts.failed, batch.kind)
        if not self.failing:
            self.failing = True
            logger.error(
                "alert webhook %s: a %s alert was not delivered (%s); further failures are counted, "
                "not logged, until it delivers again",
                self.label,
                batch.kind,
                error,
            )
        return False

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        session = self.alerts.http()
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        url = self.config.url.get_secret_value()
        response = await egress.installed().request(
            session,
            "POST",
            url,
            purpose=f"alert webhook {self.label}",
            shown=self.shown,
            json=body,
            headers=headers,
            timeout=timeout,
        )
        async with response:
            await response.read()
            return response.status

    def _count(self, table: AlertCounts, kind: str) -> None:
        key = (self.label, kind)
        table[key] = table.get(key, 0) + 1


class Alerts:
    """Classifies the feed's records and hands each alert to every webhook that wants its kind."""

    def __init__(
        self, config: AlertsConfig, *, sent: AlertCounts | None = None, failed: AlertCounts | None = None
    ) -> None:
        self.config = config
        self.sent: AlertCounts = {} if sent is None else sent
        self.failed: AlertCounts = {} if failed is None else failed
        self.instance = config.instance or socket.gethostname()
        self.burst = AuthBurst(config.auth_failures.count, config.auth_failures.window)
        self.webhooks = [Webhook(webhook, self) for webhook in config.webhooks]
        self._http: aiohttp.ClientSession | None = None
        self._started = False

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks)

    def observe(self, record: Mapping[str, Any]) -> None:
        """The feed's listener: queue what the record means, at once."""
        if not self.webhooks:
            return
        kind = classify_record(record)
        if kind == AUTH_FAILURE:
            burst = self.burst.add(record, time.monotonic())
            if burst is None:
                return
            kind, record = "auth_failures", burst
        if kind is None:
            return
        for webhook in self.webhooks:
            webhook.offer(kind, record)

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = egress.installed().session(_PURPOSE)
        return self._http

    def start(self) -> None:
        self._started = True
        for webhook in self.webhooks:
            webhook.start()

    def configure(self, config: AlertsConfig) -> None:
        """A reloaded `server.alerts`: unchanged webhooks keep their throttles, the others start afresh."""
        if config == self.config:
            return
        kept = {id(webhook): webhook for webhook in self.webhooks}
        webhooks: list[Webhook] = []
        for webhook_config in config.webhooks:
            same = next((w for w in self.webhooks if w.config == webhook_config and id(w) in kept), None)
            webhooks.append(kept.pop(id(same)) if same is not None else Webhook(webhook_config, self))
        for retired in kept.values():
            retired.stop()
        if config.auth_failures != self.config.auth_failures:
            self.burst = AuthBurst(config.auth_failures.count, config.auth_failures.window)
        self.config, self.webhooks = config, webhooks
        self.instance = config.instance or socket.gethostname()
        if self._started:
            self.start()

    async def aclose(self) -> None:
        for webhook in self.webhooks:
            await webhook.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None
