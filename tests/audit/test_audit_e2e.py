"""The audit trail of a running proxy: one event per request, in every sink, without secrets."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import httpx2
import pytest

from tests.admin.test_app import ADMIN, ADMIN_IPS, ADMIN_TOKEN, call
from tests.proxy import AUTH_HEADER, TOKEN, demo_mcp, mcp_client, run_proxy
from tests.server.test_endpoint import MCP_HEADERS

pytestmark = pytest.mark.e2e

REQUESTS = 10_000
WRONG = "wrong-token-never-in-the-audit"


def server(tmp_path: Path) -> dict[str, object]:
    return {
        "admin": {"token": ADMIN_TOKEN, "ip_whitelist": ADMIN_IPS},
        "trusted_proxies": ["127.0.0.1"],
        "security": {"ip_blacklist": ["10.66.0.0/16"], "auth_failure_ban": {"enabled": False}},
        "audit": {
            "sinks": [
                {"type": "sqlite", "path": str(tmp_path / "audit.db")},
                {"type": "file", "path": str(tmp_path / "audit.jsonl"), "max_bytes": "1GB"},
            ],
            "arguments": "hash",
        },
    }


def kind_of(i: int) -> tuple[dict[str, str], int, str]:
    """Request i's headers, expected status and the one event type it must produce."""
    rid = {"X-Request-Id": f"r{i}"}
    if i % 3 == 0:  # authenticated, then refused for lacking a session: no child process per request
        return {**MCP_HEADERS, **AUTH_HEADER, **rid}, 400, "authentication"
    if i % 3 == 1:
        return {**MCP_HEADERS, "Authorization": f"Bearer {WRONG}", **rid}, 401, "authentication"
    return {**MCP_HEADERS, **AUTH_HEADER, "X-Forwarded-For": "10.66.1.1", **rid}, 403, "ip_block"


@pytest.mark.anyio
@pytest.mark.timeout(600)
async def test_ten_thousand_mixed_requests_make_exactly_one_event_each(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server(tmp_path)) as proxy:
        limits = httpx2.Limits(max_connections=32)
        async with httpx2.AsyncClient(limits=limits, timeout=60) as http:
            gate = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                headers, status, _ = kind_of(i)
                ping = {"jsonrpc": "2.0", "id": i, "method": "ping"}
                async with gate:
                    reply = await http.post(proxy.url("demo"), headers=headers, json=ping)
                assert reply.status_code == status, (i, reply.text)

            await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        async with mcp_client(proxy.url("demo")) as client:
            await client.call_tool("echo", {"message": "audited"})
        for _ in range(50):  # the writer runs a moment behind the request
            listed = call(proxy, "GET", "/admin/audit?type=tool_call&limit=5")
            assert listed.status_code == 200
            if listed.json()["events"]:
                break
            await asyncio.sleep(0.05)
        (tool_event,) = listed.json()["events"]
        assert tool_event["tool"] == "echo"
        assert tool_event["user"] == "token:server"
        assert set(tool_event["details"]["arguments"]) == {"sha256"}
        assert tool_event["latency_ms"] > 0
        assert call(proxy, "GET", "/admin/audit?type=nonsense").status_code == 400
        metrics = call(proxy, "GET", "/metrics").text
        assert 'mcp_barbican_audit_events_failed_total{sink="file:' in metrics
        assert call(proxy, "GET", "/admin/security/metrics").json()["audit_events_written"] >= REQUESTS
    # The proxy has stopped: every sink was flushed on shutdown.
    by_request: dict[str, list[str]] = {}
    for line in (tmp_path / "audit.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["request_id"] is not None:
            by_request.setdefault(event["request_id"], []).append(event["type"])
    assert len(by_request) == REQUESTS
    for i in range(REQUESTS):
        assert by_request[f"r{i}"] == [kind_of(i)[2]], i
    with sqlite3.connect(tmp_path / "audit.db") as db:
        rows = db.execute("SELECT json_extract(event, '$.request_id') FROM audit WHERE event LIKE '%\"r%'").fetchall()
        ids = [row[0] for row in rows if row[0] is not None and row[0].startswith("r")]
    assert sorted(ids) == sorted(f"r{i}" for i in range(REQUESTS))
    for path in (tmp_path / "audit.jsonl", tmp_path / "audit.db", tmp_path / "audit.db-wal"):
        if path.exists():
            data = path.read_bytes()
            assert TOKEN.encode() not in data
            assert WRONG.encode() not in data
            assert ADMIN_TOKEN.encode() not in data


def test_admin_actions_and_token_events_are_audited(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server(tmp_path)) as proxy:
        issued = call(proxy, "POST", "/admin/tokens", {"id": "audited"}).json()
        call(proxy, "DELETE", "/admin/tokens/audited")
        call(proxy, "POST", "/admin/security/ip-rules", {"cidr": "192.0.2.0/24"})
        for _ in range(50):  # the writer runs a moment behind the request
            events = call(proxy, "GET", "/admin/audit?limit=50").json()["events"]
            if sum(e["type"] in ("admin", "token") for e in events) == 3:
                break
            time.sleep(0.05)
        no_audit = call(proxy, "GET", "/admin/audit", headers={})
    assert no_audit.status_code == 401
    actions = [(e["type"], e["action"], e["success"]) for e in events]
    assert ("token", "POST /admin/tokens", True) in actions
    assert ("token", "DELETE /admin/tokens/{id}", True) in actions
    assert ("admin", "POST /admin/security/ip-rules", True) in actions
    assert all(e["user"] == "admin:0" for e in events if e["type"] in ("admin", "token"))
    assert issued["token"] not in (tmp_path / "audit.jsonl").read_text()
    assert ADMIN["Authorization"].split()[1] not in (tmp_path / "audit.jsonl").read_text()


def test_without_a_sqlite_sink_the_query_says_so(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server={"admin": {"token": ADMIN_TOKEN}}) as proxy:
        reply = call(proxy, "GET", "/admin/audit")
    assert reply.status_code == 409
    assert "sqlite" in reply.json()["message"]


@pytest.mark.anyio
async def test_tool_call_events_say_how_each_call_ended(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server(tmp_path)) as proxy:
        async with mcp_client(proxy.url("demo")) as client:
            assert not (await client.call_tool("echo", {"message": "fine"})).is_error
            assert (await client.call_tool("add", {"a": 1e308, "b": 1e308})).is_error
            with pytest.raises(Exception, match="Unknown tool"):
                await client.call_tool("no-such-tool", {})
        events: list[dict[str, object]] = []
        for _ in range(50):  # the writer runs a moment behind the request
            events = call(proxy, "GET", "/admin/audit?type=tool_call&limit=10").json()["events"]
            if len(events) == 3:
                break
            await asyncio.sleep(0.05)
    outcomes = {event["tool"]: (event["success"], event["error"]) for event in events}
    assert outcomes == {
        "echo": (True, None),
        "add": (False, "the tool reported an error"),
        "no-such-tool": (False, outcomes["no-such-tool"][1]),
    }
    assert "Unknown tool" in str(outcomes["no-such-tool"][1])
