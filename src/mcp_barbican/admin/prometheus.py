"""Prometheus text for `/metrics`: request counts and latency per MCP and method, upstream state,
sessions, the security counters and the audit trail's, as `mcp_barbican_*` families.

A custom collector reads the plain numbers the request path keeps (`metrics.RequestStats`,
`SecurityCounters`) at scrape time, through prometheus-client's own exposition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from mcp_barbican.storage.health import DECISIONS, FEATURES

if TYPE_CHECKING:
    from mcp_barbican.admin.control import ServedMcp, SessionForwards
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.security.counters import SecurityCounters
    from mcp_barbican.storage.health import StoreHealth

__all__ = ["CONTENT_TYPE", "exposition"]

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"

_SECURITY: Final = {
    "authentication_attempts": "Credentials checked",
    "authentication_failures": "Credentials refused (401)",
    "rate_limit_exceeded": "Requests refused by a rate limit (429)",
    "ip_blocked": "Requests refused by an IP rule or ban (403)",
    "bans_issued": "Addresses banned after repeated authentication failures",
    "origin_rejected": "Requests refused for their Host or Origin",
    "requests_rejected_limits": "Requests refused by an input limit (413, 431, 400)",
    "authorization_denied": "Calls, reads and requests refused by an authorization policy",
    "tokens_generated": "Client tokens issued through the admin API",
    "tokens_revoked": "Client tokens revoked through the admin API",
    "egress_refused": "URLs the proxy would have fetched on its own account, refused by server.egress",
    "security_violations": "Refused requests of any kind",
}


class _Collector:
    def __init__(
        self,
        runtimes: Iterable[ServedMcp] | None,
        counters: SecurityCounters,
        audit: AuditTrail | None,
        health: StoreHealth | None,
        forwards: SessionForwards | None = None,
    ) -> None:
        self.runtimes = runtimes
        self.counters = counters
        self.audit = audit
        self.health = health
        self.forwards = forwards

    def collect(self) -> Iterator[Metric]:
        runtimes = list(self.runtimes or ())
        requests = CounterMetricFamily("mcp_barbican_requests", "MCP requests relayed", labels=["mcp", "method"])
        errors = CounterMetricFamily(
            "mcp_barbican_request_errors", "MCP requests that did not reach the upstream", labels=["mcp", "method"]
        )
        latency = HistogramMetricFamily(
            "mcp_barbican_request_duration_seconds", "Time to answer a relayed request", labels=["mcp", "method"]
        )
        up = GaugeMetricFamily("mcp_barbican_upstream_up", "1 when the upstream is ready", labels=["mcp"])
        sessions = GaugeMetricFamily("mcp_barbican_sessions_open", "Client sessions open", labels=["mcp"])
        for runtime in runtimes:
            stats = runtime.stats
            for method, count in stats.requests.items():
                requests.add_metric([runtime.id, method], count)
                errors.add_metric([runtime.id, method], stats.errors.get(method, 0))
            for method, histogram in stats.latency.items():
                latency.add_metric([runtime.id, method], histogram.cumulative(), histogram.sum)
            up.add_metric([runtime.id], 1.0 if runtime.status == "ready" else 0.0)
            sessions.add_metric([runtime.id], len(runtime.sessions))
        yield from (requests, errors, latency, up, sessions)
        snapshot = self.counters.snapshot()
        for name, help_text in _SECURITY.items():
            yield CounterMetricFamily(f"mcp_barbican_{name}", help_text, value=snapshot[name])
        changes = CounterMetricFamily(
            "mcp_barbican_integrity_changes", "Tool definition changes seen (tool pinning)", labels=["mcp", "change"]
        )
        for (mcp_id, change), count in sorted(self.counters.integrity_changes.items()):
            changes.add_metric([mcp_id, change], count)
        yield changes
        for name, table, help_text in (
            ("mcp_barbican_alerts_sent", self.counters.alerts_sent, "Alerts delivered to a webhook"),
            ("mcp_barbican_alerts_failed", self.counters.alerts_failed, "Alerts a webhook never took (tries spent)"),
        ):
            family = CounterMetricFamily(name, help_text, labels=["webhook", "kind"])
            for (webhook, kind), count in sorted(table.items()):
                family.add_metric([webhook, kind], count)
            yield family
        if self.audit is not None and self.audit.enabled:
            yield CounterMetricFamily(
                "mcp_barbican_audit_events_written", "Audit events handed to the sinks", value=self.audit.written
            )
            failed = CounterMetricFamily(
                "mcp_barbican_audit_events_failed", "Audit events a sink failed to write", labels=["sink"]
            )
            for sink, count in self.audit.failed.items():
                failed.add_metric([sink], count)
            yield failed
        if self.health is not None:
            yield from _storage(self.health)
        if self.forwards is not None:
            forwards = CounterMetricFamily(
                "mcp_barbican_session_forwards",
                "Requests for a session another replica owns: passed to it, or served here for another",
                labels=["role"],
            )
            forwards.add_metric(["forwarded"], self.forwards.forwarded)
            forwards.add_metric(["served"], self.forwards.served)
            yield forwards
        last = snapshot["last_violation"]
        yield GaugeMetricFamily(
            "mcp_barbican_last_violation_timestamp_seconds",
            "Unix time of the last refused request (0: none yet)",
            value=last if last is not None else 0.0,
        )


def _storage(health: StoreHealth) -> Iterator[Metric]:
    yield GaugeMetricFamily("mcp_barbican_storage_up", "1 while the state store answers", value=float(health.up))
    decisions = CounterMetricFamily(
        "mcp_barbican_storage_outage_decisions",
        "Requests decided by fail_mode while the state store was unreachable",
        labels=["feature", "decision"],
    )
    for feature in FEATURES:
        for decision in DECISIONS:
            decisions.add_metric([feature, decision], health.decisions.get((feature, decision), 0))
    yield decisions


def exposition(
    runtimes: Iterable[ServedMcp],
    counters: SecurityCounters,
    audit: AuditTrail | None = None,
    health: StoreHealth | None = None,
    forwards: SessionForwards | None = None,
) -> bytes:
    """The Prometheus text exposition of everything above."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(runtimes, counters, audit, health, forwards))
    return generate_latest(registry)
