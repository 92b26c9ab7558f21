"""Egress through the real proxy: admin registrations of refused upstream URLs, their audit events and
counter, allow_private both ways, an allowed upstream reached through the pinned resolver, and what a
stdio registration tells the audit trail and the log (never a variable's value).

Nothing leaves the machine: refused URLs are refused before any connection, and the one upstream
that is reached is this proxy's own loopback listener.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from tests.admin.test_app import SERVER, call, registration
from tests.proxy import AUTH_HEADER, TOKEN, RunningProxy, demo_mcp, mcp_client, run_proxy

pytestmark = pytest.mark.e2e

REFUSED_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "http://[::ffff:169.254.169.254]/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    server = {**SERVER, "allowed_hosts": ["localhost"]}
    with run_proxy(tmp_path_factory.mktemp("egress"), [demo_mcp("fixed")], server=server) as running:
        yield running


def http_registration(mcp_id: str, url: str) -> dict[str, Any]:
    return {"id": mcp_id, "url": url, "headers": AUTH_HEADER, "auth": {"type": "token", "token": TOKEN}}


def audit_events(proxy: RunningProxy, kind: str, wanted: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        events: list[dict[str, Any]] = call(proxy, "GET", f"/admin/audit?type={kind}&limit=1000").json()["events"]
        if len(events) >= wanted or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_registering_a_refused_url_is_a_400_an_audit_event_and_a_count(proxy: RunningProxy) -> None:
    before = call(proxy, "GET", "/admin/security/metrics").json()["egress_refused"]
    for index, url in enumerate(REFUSED_URLS):
        created = call(proxy, "POST", "/admin/mcps", http_registration(f"bad{index}", url))
        assert created.status_code == 400, (url, created.text)
        answer = created.json()
        assert answer["error"] == "invalid_request"
        assert answer["message"].startswith("url: ") and "refused by the egress policy" in answer["message"], answer
        assert call(proxy, "GET", f"/admin/mcps/bad{index}").status_code == 404
    # PUT is checked too (the id must be one the API owns: register an allowed one first).
    assert call(proxy, "POST", "/admin/mcps", http_registration("movable", "http://127.0.0.1:9/mcp")).status_code == 201
    moved = call(proxy, "PUT", "/admin/mcps/movable", http_registration("movable", REFUSED_URLS[0]))
    assert moved.status_code == 400 and "cloud metadata" in moved.text
    events = [e for e in audit_events(proxy, "egress", len(REFUSED_URLS) + 1) if e["action"] == "egress.refused"]
    assert len(events) >= len(REFUSED_URLS) + 1
    assert {event["resource"] for event in events} >= {str(URL(url)) for url in REFUSED_URLS}
    assert all(event["success"] is False and event["error"] for event in events)
    after = call(proxy, "GET", "/admin/security/metrics").json()["egress_refused"]
    assert after - before == len(REFUSED_URLS) + 1
    assert "mcp_barbican_egress_refused_total" in call(proxy, "GET", "/metrics").text


@pytest.mark.anyio
async def test_an_allowed_private_upstream_is_reached_through_the_pinned_resolver(proxy: RunningProxy) -> None:
    via = http_registration("via", f"http://localhost:{proxy.port}/mcp/fixed")
    created = call(proxy, "POST", "/admin/mcps", via)
    assert created.status_code == 201, created.text
    async with mcp_client(proxy.url("via")) as client:
        result = await client.call_tool("echo", {"message": "through"})
    assert "through" in str(result.content[0].text)  # type: ignore[union-attr]


def test_allow_private_false_refuses_loopback_names_and_addresses(tmp_path: Path) -> None:
    server = {**SERVER, "egress": {"allow_private": False}}
    with run_proxy(tmp_path, [demo_mcp("fixed")], server=server) as proxy:
        for url in (f"http://127.0.0.1:{proxy.port}/mcp/fixed", f"http://localhost:{proxy.port}/mcp/fixed"):
            created = call(proxy, "POST", "/admin/mcps", http_registration("local", url))
            assert created.status_code == 400, created.text
            assert "allow_private is false" in created.text


def test_a_stdio_registration_is_audited_and_logged_with_names_never_values(proxy: RunningProxy) -> None:
    secret = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    body = registration("spawned", env={"DEMO_API_KEY": secret, "OTHER_TOKEN": secret})
    assert call(proxy, "POST", "/admin/mcps", body).status_code == 201
    events = [
        event
        for event in audit_events(proxy, "admin", 1)
        if event["action"] == "POST /admin/mcps" and event["details"].get("spawn")
    ]
    assert events, "no registration event with the spawn"
    spawn = events[-1]["details"]["spawn"]
    assert spawn["command"] == body["command"] and spawn["args"] == body["args"]
    assert spawn["env"] == ["DEMO_API_KEY", "OTHER_TOKEN"]
    assert body["command"] in spawn["command_line"]
    assert secret not in call(proxy, "GET", "/admin/audit?limit=1000").text
    deadline = time.monotonic() + 10
    while "started pid" not in proxy.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = [line for line in proxy.log_text().splitlines() if "started pid" in line and "OTHER_TOKEN" in line]
    assert started and "-m mcp_barbican.demo" in started[0] and "DEMO_API_KEY" in started[0]
    assert secret not in proxy.log_text()
