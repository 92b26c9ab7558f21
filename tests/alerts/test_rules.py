"""The alert decisions, from tables: kinds, bursts, throttling, message shapes, backoff."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_barbican.alerts import AuthBurst, Batch, Throttle, backoff, classify, json_payload, slack_payload
from mcp_barbican.alerts.rules import BACKOFF_CAP, MAX_EVENTS, summary
from mcp_barbican.audit import AuditEvent
from mcp_barbican.config import ALERT_KINDS, AlertKind


def rec(type_: str, action: str, success: bool, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "action": action, "success": success, **extra}


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        (rec("ban", "ban", True), "ban"),
        (rec("authentication", "authenticate", False), "auth_failure"),
        (rec("authentication", "authenticate", True), None),
        (rec("upstream", "upstream.down", False), "upstream_down"),
        (rec("upstream", "upstream.up", True), None),
        (rec("integrity", "integrity.changed", False), "tool_changed"),
        (rec("integrity", "integrity.finding", False), "scan_finding"),
        (rec("integrity", "result_finding", True), "scan_finding"),
        (rec("integrity", "integrity.approved", True), None),
        (rec("integrity", "integrity.reset", True), None),
        (rec("integrity", "invalid_arguments", False), None),
        (rec("integrity", "redacted", True), None),
        (rec("rate_limit", "request", False), None),
        (rec("ip_block", "request", False), None),
        (rec("admin", "DELETE /admin/security/ip-rules/{id}", True), None),
        (rec("egress", "egress.refused", False), None),
        (rec("config_reload", "reload", False), None),
        (rec("token", "POST /admin/tokens", True), None),
    ],
)
def test_classification(record: dict[str, Any], kind: str | None) -> None:
    assert classify(record) == kind


def test_a_ban_as_the_trail_writes_it_is_a_ban() -> None:
    details = {"rule_id": "ban-1", "expires_at": 1.0, "reason": "5 failures"}
    event = AuditEvent("ban", "ban", True, "203.0.113.7/32", remote_addr="203.0.113.7/32", details=details)
    assert classify(event.as_dict()) == "ban"


@pytest.mark.parametrize(
    ("times", "fires_at"),
    [
        ([0, 1, 2], 2),  # the third failure within 10s
        ([0, 20, 21, 22], 3),  # the first one falls out of the window
        ([0, 5, 10.1, 15, 20], 3),  # 5, 10.1, 15
        ([0, 11, 22, 33], None),  # never three within 10s
        ([0, 1, 2, 3, 4, 5], 2),  # a second burst needs three new failures (index 5): see below
    ],
)
def test_auth_burst(times: list[float], fires_at: int | None) -> None:
    burst = AuthBurst(count=3, window=10)
    fired = [i for i, now in enumerate(times) if burst.add(rec("authentication", "authenticate", False), now)]
    assert (fired[0] if fired else None) == fires_at
    if times == [0, 1, 2, 3, 4, 5]:
        assert fired == [2, 5]


def test_a_burst_names_its_addresses_and_keeps_its_latest_failures() -> None:
    burst = AuthBurst(count=7, window=60)
    made = None
    for i in range(7):
        made = burst.add(rec("authentication", "authenticate", False, remote_addr=f"198.51.100.{i % 2}"), i)
    assert made is not None
    assert made["details"] == {"failures": 7, "window_seconds": 60, "remote_addrs": ["198.51.100.0", "198.51.100.1"]}
    assert len(made["latest"]) == MAX_EVENTS


@pytest.mark.parametrize(
    ("steps", "sent"),
    [
        # (time, records added before taking at that time) -> (count of the batch taken, or None)
        ([(0, 1)], [1]),  # the first goes at once
        ([(0, 1), (10, 3), (59, 0), (60, 0)], [1, None, None, 3]),  # counted, then summed up when the interval ends
        ([(0, 1), (100, 1)], [1, 1]),  # after the interval, at once again
        ([(0, 0)], [None]),  # nothing waits
        ([(0, 2), (30, 0), (61, 1), (90, 0), (121, 0)], [2, None, 1, None, None]),  # 61: the interval is over
    ],
)
def test_throttle(steps: list[tuple[float, int]], sent: list[int | None]) -> None:
    throttle = Throttle("ban", 60)
    taken: list[int | None] = []
    for now, added in steps:
        for _ in range(added):
            throttle.add(rec("ban", "ban", True))
        batch = throttle.take(now)
        taken.append(batch.count if batch else None)
    assert taken == sent


def test_a_throttle_keeps_the_first_records_only() -> None:
    throttle = Throttle("ban", 60)
    for i in range(50):
        throttle.add(rec("ban", "ban", True, resource=str(i)))
    batch = throttle.take(0)
    assert batch is not None and batch.count == 50
    assert [r["resource"] for r in batch.events] == [str(i) for i in range(MAX_EVENTS)]
    assert throttle.due_at() is None


def test_backoff_schedule() -> None:
    assert [backoff(attempt) for attempt in range(1, 9)] == [1, 2, 4, 8, 16, 32, BACKOFF_CAP, BACKOFF_CAP]


BAN = rec("ban", "ban", True, resource="203.0.113.7/32", details={"expires_at": 0, "reason": "5 failures"})
RECORDS: dict[AlertKind, dict[str, Any]] = {
    "ban": BAN,
    "auth_failures": rec(
        "authentication",
        "auth_failures",
        False,
        details={"failures": 10, "window_seconds": 60.0, "remote_addrs": ["198.51.100.1"]},
    ),
    "upstream_down": rec("upstream", "upstream.down", False, mcp="files", error="connection refused"),
    "tool_changed": rec(
        "integrity", "integrity.changed", False, mcp="files", tool="read", details={"change": "changed", "hidden": True}
    ),
    "scan_finding": rec(
        "integrity", "integrity.finding", False, mcp="files", tool="read", details={"findings": [{"rule": "hidden"}]}
    ),
}
SUMMARIES = {
    "ban": "address 203.0.113.7/32 banned until 1970-01-01T00:00:00Z (5 failures)",
    "auth_failures": "10 authentication failures within 60s (from 198.51.100.1)",
    "upstream_down": "upstream files is down: connection refused",
    "tool_changed": "MCP files: tool read changed (hidden until approved)",
    "scan_finding": "MCP files: scanner findings (hidden) in the definition of tool read",
}


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_summaries(kind: AlertKind) -> None:
    assert summary(Batch(kind, 1, [RECORDS[kind]])) == SUMMARIES[kind]
    assert summary(Batch(kind, 4, [RECORDS[kind]])) == SUMMARIES[kind] + ", and 3 more"


def test_json_payload_shape() -> None:
    body = json_payload(Batch("ban", 2, [BAN, BAN]), "proxy-1", 0.0)
    assert body == {
        "source": "mcp-barbican",
        "instance": "proxy-1",
        "kind": "ban",
        "summary": SUMMARIES["ban"] + ", and 1 more",
        "count": 2,
        "events": [BAN, BAN],
        "timestamp": "1970-01-01T00:00:00.000000Z",
    }
    json.dumps(body)  # serializable as is


def test_slack_payload_shape_and_escaping() -> None:
    hostile = rec("upstream", "upstream.down", False, mcp="files", error="<!channel> & <http://x|y>")
    body = slack_payload(Batch("upstream_down", 2, [RECORDS["upstream_down"], hostile]), "proxy-1")
    assert body == {
        "text": "[mcp-barbican proxy-1] upstream_down: upstream files is down: connection refused, and 1 more\n"
        "- upstream files is down: &lt;!channel&gt; &amp; &lt;http://x|y&gt;"
    }
