"""An aggregated session belongs to the principal that opened it, whatever a message asks for.

A POST naming a session is taken at its word until the message is known; then a message to one
MCP is checked by that MCP's own authentication, and anything else (local answers, listings,
notifications, an MCP without authentication, which vouches for nobody) by the credentials the
session opened with. Every way in must answer another caller 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import httpx2
import pytest

from tests.proxy import RunningProxy, demo_mcp, run_proxy
from tests.server.test_aggregate_attacks_e2e import Session, bearer

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
ADMIN: Final = "admin-token-0123456789abcdef"
MESSAGES: Final[list[dict[str, Any]]] = [
    {"jsonrpc": "2.0", "id": 90, "method": "ping"},
    {"jsonrpc": "2.0", "id": 91, "method": "tools/call", "params": {"name": "private__echo", "arguments": {}}},
    {"jsonrpc": "2.0", "id": 92, "method": "tools/call", "params": {"name": "open__echo", "arguments": {}}},
    {"jsonrpc": "2.0", "id": 93, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 94, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 91}},
    {"jsonrpc": "2.0", "id": 1, "result": {}},
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [
        {
            **demo_mcp("private"),
            "auth": {"type": "token", "tokens": [{"id": "a", "token": ALICE}, {"id": "b", "token": BOB}]},
        },
        {**demo_mcp("open"), "auth": {"type": "none"}},
    ]
    server = {"admin": {"token": ADMIN}, "security": {"auth_failure_ban": {"enabled": False}}}
    with run_proxy(tmp_path_factory.mktemp("aggregate-sessions"), mcps, server=server) as running:
        yield running


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.get("method", "response"))
@pytest.mark.parametrize("intruder", [bearer(BOB), {"Authorization": ""}], ids=["another-token", "no-credential"])
def test_another_caller_finds_no_session(
    proxy: RunningProxy, message: dict[str, Any], intruder: dict[str, str]
) -> None:
    alice = Session(proxy, bearer(ALICE))
    assert alice.call("private__echo")["result"]["content"][0]["text"] == "hi"  # her members are open
    assert alice.call("open__echo")["result"]["content"][0]["text"] == "hi"
    headers = {k: v for k, v in alice.headers.items() if k != "Authorization"}
    if intruder["Authorization"]:
        headers |= intruder
    stolen = httpx2.post(alice.url, headers=headers, json=message, timeout=30)
    if not intruder["Authorization"] and message.get("params", {}).get("name") == "private__echo":
        # That MCP's own authentication answers first, as on /mcp/private: nothing about the session.
        assert stolen.status_code == 401, stolen.text
        assert stolen.json()["error"] == "invalid_token"
    else:
        assert stolen.status_code == 404, stolen.text
        assert stolen.json()["error"]["message"] == "Session not found"
    assert alice.call("private__echo")["result"]["content"][0]["text"] == "hi"  # and hers still works


def test_a_session_keeps_working_when_the_served_mcps_change(proxy: RunningProxy) -> None:
    alice = Session(proxy, bearer(ALICE))
    assert alice.call("open__echo")["result"]["content"][0]["text"] == "hi"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    added = httpx2.post(f"{proxy.base}/admin/mcps", json={**demo_mcp("late"), "auth": {"type": "none"}}, headers=admin)
    assert added.status_code == 201, added.text
    try:
        assert alice.call("late__echo")["result"]["content"][0]["text"] == "hi"
        headers = {k: v for k, v in alice.headers.items() if k != "Authorization"} | bearer(BOB)
        stolen = httpx2.post(alice.url, headers=headers, json=MESSAGES[2], timeout=30)
        assert stolen.status_code == 404, stolen.text
    finally:
        assert httpx2.delete(f"{proxy.base}/admin/mcps/late", headers=admin).status_code in (200, 204)
