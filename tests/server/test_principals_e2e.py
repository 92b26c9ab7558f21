"""Principal ids through a running proxy: one per credential, so sessions, rate limits and audit tell them apart.

Before the fix every MCP's single `auth.token` was principal `token:token`, and so was a token
listed (or issued) with the id `token`: the proxy fixture below holds exactly those credentials.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.proxy import RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS, sse_messages

pytestmark = pytest.mark.e2e

SINGLE = "single-token-0123456789"  # mcps[a].auth.token
LISTED = "listed-token-0123456789"  # mcps[a].auth.tokens: id `token`
B1, B2 = "b1-token-0123456789", "b2-token-0123456789"  # the single tokens of MCPs b1 and b2
KEY = "key-token-0123456789"  # MCP k's credential, in a custom header
ADMIN = {"Authorization": "Bearer admin-token-0123456789abcdef"}
PER_TOKEN_BURST = 5


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, audit_file: Path) -> Iterator[RunningProxy]:
    mcps = [
        {
            **demo_mcp("a"),
            "auth": {"type": "token", "token": SINGLE, "tokens": [{"id": "token", "token": LISTED}]},
        },
        {**demo_mcp("b1"), "auth": {"type": "token", "token": B1}},
        {**demo_mcp("b2"), "auth": {"type": "token", "token": B2}},
        {**demo_mcp("k"), "auth": {"type": "token", "token": KEY, "header": "X-Api-Key", "prefix": ""}},
    ]
    server = {
        "admin": {"token": ADMIN["Authorization"].split()[1]},
        "security": {
            "auth_failure_ban": {"enabled": False},
            # One limiter for every MCP (they share the server's block), keyed per principal.
            "rate_limit": {
                "per_token_requests_per_minute": PER_TOKEN_BURST,
                "per_token_burst_size": PER_TOKEN_BURST,
            },
        },
        "audit": {"sinks": [{"type": "file", "path": str(audit_file)}]},
    }
    with run_proxy(tmp_path_factory.mktemp("principals"), mcps, server=server) as running:
        yield running


def rpc(proxy: RunningProxy, mcp_id: str, headers: dict[str, str], body: dict[str, Any]) -> httpx2.Response:
    base = {k: v for k, v in MCP_HEADERS.items() if k != "Authorization"}
    return httpx2.post(proxy.url(mcp_id), headers={**base, **headers}, json=body, timeout=30)


def test_a_session_answers_only_the_credential_that_opened_it(proxy: RunningProxy, audit_file: Path) -> None:
    opened = rpc(proxy, "a", bearer(SINGLE), INIT)
    assert opened.status_code == 200, opened.text
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    own = rpc(proxy, "a", {**bearer(SINGLE), **session}, ping)
    assert own.status_code == 200 and sse_messages(own.text)[0]["result"] == {}
    other = rpc(proxy, "a", {**bearer(LISTED), **session}, ping)
    assert other.status_code == 404, "another credential of the same MCP must not reach the session"
    assert rpc(proxy, "a", {**bearer(SINGLE), **session}, ping).status_code == 200
    want = {"token:mcp:a", "token:token"}
    assert want <= audited_users(audit_file, want), "the audit trail tells the two credentials apart"


def audited_users(path: Path, want: set[str]) -> set[str]:
    """Principals of successful authentications in the audit file (its writer runs a moment behind)."""
    users: set[str] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not want <= users:
        time.sleep(0.1)
        lines = path.read_text().splitlines() if path.exists() else []
        events = [orjson.loads(line) for line in lines]
        users = {e["user"] for e in events if e["type"] == "authentication" and e["success"]}
    return users


def test_one_principal_does_not_drain_another_ones_per_token_limit(proxy: RunningProxy) -> None:
    # DELETE without a session id: the endpoint refuses it (400) after the limiter took a token.
    statuses = [httpx2.delete(proxy.url("b1"), headers=bearer(B1)).status_code for _ in range(PER_TOKEN_BURST + 1)]
    assert statuses == [400] * PER_TOKEN_BURST + [429], statuses
    assert httpx2.delete(proxy.url("b2"), headers=bearer(B2)).status_code == 400, "b2's token has its own bucket"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param({"id": "token"}, 409, "configured at mcps[0].auth.tokens[0].id", id="a-listed-id"),
        pytest.param({"id": "server"}, 409, "reserved", id="server"),
        pytest.param({"id": "mcp:a"}, 400, "id", id="colon"),
    ],
)
def test_issuing_a_token_under_a_taken_id_is_refused(
    proxy: RunningProxy, body: dict[str, str], status: int, fragment: str
) -> None:
    response = httpx2.post(f"{proxy.base}/admin/tokens", json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    assert fragment in response.json()["message"]
    if status == 409:
        assert response.json()["error"] == "conflict"


def test_an_issued_id_is_taken_for_good(proxy: RunningProxy) -> None:
    first = httpx2.post(f"{proxy.base}/admin/tokens", json={"id": "fresh"}, headers=ADMIN)
    assert first.status_code == 201, first.text
    assert httpx2.delete(f"{proxy.base}/admin/tokens/fresh", headers=ADMIN).status_code == 204
    again = httpx2.post(f"{proxy.base}/admin/tokens", json={"id": "fresh"}, headers=ADMIN)
    assert again.status_code == 409


def raw_request(proxy: RunningProxy, method: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """A request with repeated headers (which httpx would merge)."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.putrequest(method, path, skip_accept_encoding=True)
    body = orjson.dumps(INIT) if method == "POST" else b""
    for name, value in [*headers, ("Content-Length", str(len(body)))]:
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    result = response.status, response.read()
    connection.close()
    return result


MCP_BASE = [(k, v) for k, v in MCP_HEADERS.items() if k != "Authorization"]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param(
            "POST", "/mcp/a", [("Authorization", f"Bearer {SINGLE}"), ("Authorization", "Bearer x")], id="mcp"
        ),
        pytest.param(
            "POST", "/mcp/a", [("Authorization", "Bearer x"), ("Authorization", f"Bearer {SINGLE}")], id="mcp-last"
        ),
        pytest.param("POST", "/mcp/k", [("X-Api-Key", KEY), ("x-api-key", KEY)], id="custom-header"),
        pytest.param("GET", "/api/v1/mcp/list", [("Authorization", f"Bearer {SINGLE}")] * 2, id="mcp-list"),
        pytest.param(
            "GET", "/admin/mcps", [("Authorization", ADMIN["Authorization"]), ("Authorization", "Bearer x")], id="admin"
        ),
    ],
)
def test_a_repeated_credential_header_is_a_400(
    proxy: RunningProxy, method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    status, body = raw_request(proxy, method, path, [*MCP_BASE, *headers])
    assert status == 400, body
    refusal = orjson.loads(body)
    assert refusal["error"] == "invalid_request"
    assert "more than one" in refusal["message"]


def test_one_credential_header_still_opens_each_route(proxy: RunningProxy) -> None:
    assert raw_request(proxy, "POST", "/mcp/k", [*MCP_BASE, ("X-Api-Key", KEY)])[0] == 200
    assert raw_request(proxy, "GET", "/api/v1/mcp/list", [("Authorization", f"Bearer {SINGLE}")])[0] == 200
    assert raw_request(proxy, "GET", "/admin/mcps", [("Authorization", ADMIN["Authorization"])])[0] == 200


def test_an_mcp_registered_at_run_time_cannot_take_a_token_id(proxy: RunningProxy) -> None:
    issued = httpx2.post(f"{proxy.base}/admin/tokens", json={"id": "issued-ci"}, headers=ADMIN)
    assert issued.status_code == 201, issued.text
    for token_id, where in (("issued-ci", "issued through the admin API"), ("token", "mcps[0].auth.tokens[0].id")):
        definition = {**demo_mcp("late"), "auth": {"type": "token", "tokens": [{"id": token_id, "token": "late-0"}]}}
        response = httpx2.post(f"{proxy.base}/admin/mcps", json=definition, headers=ADMIN)
        assert response.status_code == 400, response.text
        assert where in response.json()["message"]
        assert "auth.tokens[0].id" in response.json()["message"]


def test_start_up_refuses_a_file_token_id_that_was_issued(tmp_path: Path) -> None:
    server = {"admin": {"token": ADMIN["Authorization"].split()[1]}, "storage": {"type": "sqlite", "path": "s.db"}}
    with run_proxy(tmp_path, [demo_mcp("a")], server=server) as first:
        assert httpx2.post(f"{first.base}/admin/tokens", json={"id": "ci"}, headers=ADMIN).status_code == 201
    listed = {**demo_mcp("a"), "auth": {"type": "token", "tokens": [{"id": "ci", "token": "ci-token-0123"}]}}
    with pytest.raises(RuntimeError) as failed, run_proxy(tmp_path, [listed], server=server):
        pass
    log = str(failed.value)
    assert "mcps[0].auth.tokens[0].id: token id 'ci' is taken by a token issued through the admin API" in log
    assert "Traceback" not in log
