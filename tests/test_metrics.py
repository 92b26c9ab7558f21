"""Prometheus exposition: it parses, and its series move with the traffic."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_barbican.metrics import BUCKETS, Latency, RequestStats
from tests.admin.test_app import ADMIN, SERVER
from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, mcp_client, run_proxy


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, 0), (0.0005, 0), (0.00051, 1), (60.0, len(BUCKETS) - 1), (61.0, len(BUCKETS))],
)
def test_latency_buckets_are_upper_inclusive(seconds: float, bucket: int) -> None:
    latency = Latency()
    latency.observe(seconds)
    assert latency.counts.index(1) == bucket
    assert latency.cumulative()[-1] == ("+Inf", 1)


def test_request_stats_totals() -> None:
    stats = RequestStats()
    stats.record("tools/call", 0.01, failed=False)
    stats.record("tools/call", 0.02, failed=True)
    stats.record("ping", 0.001, failed=False)
    assert (stats.total, stats.total_errors) == (3, 1)
    assert stats.latency["tools/call"].sum == pytest.approx(0.03)


def scrape(proxy: RunningProxy, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.get(f"{proxy.base}/metrics", headers=headers or {})


@pytest.mark.e2e
@pytest.mark.anyio
async def test_metrics_are_admin_guarded_and_move_with_traffic(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=SERVER) as proxy:
        assert scrape(proxy).status_code == 401
        assert scrape(proxy, AUTH_HEADER).status_code == 401
        before = samples(scrape(proxy, ADMIN).text)
        async with mcp_client(proxy.url("demo")) as client:
            for _ in range(3):
                await client.call_tool("echo", {"message": "x"})
        httpx2.post(proxy.url("demo"), headers={"Authorization": "Bearer wrong"}, json={})
        reply = scrape(proxy, ADMIN)
        assert reply.headers["content-type"].startswith("text/plain")
        after = samples(reply.text)
    key = ("mcp_barbican_requests_total", (("mcp", "demo"), ("method", "tools/call")))
    assert after[key] - before.get(key, 0) == 3
    count = ("mcp_barbican_request_duration_seconds_count", (("mcp", "demo"), ("method", "tools/call")))
    assert after[count] == 3
    assert after[("mcp_barbican_upstream_up", (("mcp", "demo"),))] == 1
    failures = ("mcp_barbican_authentication_failures_total", ())
    assert after[failures] - before[failures] >= 1
    assert after[("mcp_barbican_last_violation_timestamp_seconds", ())] > 0
    assert after[("mcp_barbican_audit_events_written_total", ())] > 0  # SERVER has a sqlite audit sink
    assert after[("mcp_barbican_audit_events_failed_total", (("sink", "sqlite:.mcp-barbican/audit.db"),))] == 0


@pytest.mark.e2e
def test_public_metrics_need_no_token(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server={**SERVER, "metrics": {"public": True}}) as proxy:
        reply = scrape(proxy)
        assert reply.status_code == 200
        assert ("mcp_barbican_sessions_open", (("mcp", "demo"),)) in samples(reply.text)
