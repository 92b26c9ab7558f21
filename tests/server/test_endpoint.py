"""The Streamable HTTP and legacy SSE endpoints answer every protocol mistake correctly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, run_proxy

pytestmark = pytest.mark.e2e

MCP_HEADERS = {
    **AUTH_HEADER,
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("endpoint")
    mcps = [
        demo_mcp("demo"),
        {
            **demo_mcp("other"),
            "auth": {
                "type": "token",
                "tokens": [{"id": "alice", "token": "alice-token-123"}, {"id": "bob", "token": "bob-token-4567"}],
            },
        },
    ]
    with run_proxy(directory, mcps) as running:
        yield running


def sse_messages(body: str) -> list[dict[str, Any]]:
    messages = []
    for block in body.split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if data and data[0]:
            messages.append(orjson.loads("\n".join(data)))
    return messages


def initialize(proxy: RunningProxy, mcp_id: str = "demo", headers: dict[str, str] | None = None) -> str:
    response = httpx2.post(proxy.url(mcp_id), headers={**MCP_HEADERS, **(headers or {})}, json=INIT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert sse_messages(response.text)[0]["result"]["serverInfo"]["name"] == "mcp-barbican-demo"
    session = response.headers["mcp-session-id"]
    notified = httpx2.post(
        proxy.url(mcp_id),
        headers={**MCP_HEADERS, **(headers or {}), "Mcp-Session-Id": session},
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
    )
    assert notified.status_code == 202 and notified.content == b""
    return session


def call(proxy: RunningProxy, session: str, body: Any, **headers: str) -> httpx2.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx2.post(proxy.url("demo"), headers={**MCP_HEADERS, "Mcp-Session-Id": session, **headers}, content=raw)


def test_a_request_is_answered_on_sse_with_a_priming_event_first(proxy: RunningProxy) -> None:
    session = initialize(proxy)
    response = call(
        proxy,
        session,
        {
            "jsonrpc": "2.0",
            "id": "a",
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "hi"}},
        },
    )
    assert response.status_code == 200
    assert response.headers["x-accel-buffering"] == "no"
    first = response.text.split("\n\n")[0]
    assert "id: " in first and "data: " in first and "retry: " in first
    [message] = sse_messages(response.text)
    assert message["id"] == "a"
    assert message["result"]["content"] == [{"type": "text", "text": "hi"}]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        pytest.param(b"{not json", {}, 400, -32700, id="malformed-json"),
        pytest.param(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', {}, 400, -32600, id="batch"),
        pytest.param(b'{"id":1,"method":"ping"}', {}, 400, -32600, id="not-jsonrpc-2"),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            {"Accept": "application/json"},
            406,
            -32600,
            id="accept-without-sse",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            {"Content-Type": "text/plain"},
            415,
            -32600,
            id="wrong-content-type",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            {"MCP-Protocol-Version": "1999-01-01"},
            400,
            -32600,
            id="unsupported-protocol-version",
        ),
        pytest.param(orjson.dumps(INIT), {}, 400, -32600, id="initialize-twice"),
    ],
)
def test_bad_requests_get_a_status_and_a_jsonrpc_error(
    proxy: RunningProxy, body: bytes, headers: dict[str, str], status: int, code: int
) -> None:
    session = initialize(proxy)
    response = call(proxy, session, body, **headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_an_oversized_body_gets_413(proxy: RunningProxy) -> None:
    session = initialize(proxy)
    big = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x" * (4 * 1024 * 1024 + 1)}},
    }
    response = call(proxy, session, big)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_a_request_without_a_session_id_gets_400(proxy: RunningProxy) -> None:
    response = httpx2.post(proxy.url("demo"), headers=MCP_HEADERS, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 400
    assert "session" in response.json()["error"]["message"].lower()


def test_an_unknown_session_id_gets_404(proxy: RunningProxy) -> None:
    response = call(proxy, "no-such-session", {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 404


def test_a_deleted_session_is_gone(proxy: RunningProxy) -> None:
    session = initialize(proxy)
    deleted = httpx2.delete(proxy.url("demo"), headers={**MCP_HEADERS, "Mcp-Session-Id": session})
    assert deleted.status_code in (200, 204)
    assert call(proxy, session, {"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 404


def test_a_session_is_bound_to_the_principal_that_opened_it(proxy: RunningProxy) -> None:
    session = initialize(proxy, "other", {"Authorization": "Bearer alice-token-123"})
    as_bob = httpx2.post(
        proxy.url("other"),
        headers={**MCP_HEADERS, "Authorization": "Bearer bob-token-4567", "Mcp-Session-Id": session},
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
    )
    assert as_bob.status_code == 404
    as_alice = httpx2.post(
        proxy.url("other"),
        headers={**MCP_HEADERS, "Authorization": "Bearer alice-token-123", "Mcp-Session-Id": session},
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
    )
    assert as_alice.status_code == 200


def test_notifications_and_unmatched_responses_get_202_with_no_body(proxy: RunningProxy) -> None:
    session = initialize(proxy)
    note = call(proxy, session, {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    assert (note.status_code, note.content) == (202, b"")
    answer = call(proxy, session, {"jsonrpc": "2.0", "id": 99, "result": {}})
    assert (answer.status_code, answer.content) == (202, b"")


def test_an_unknown_mcp_id_is_a_json_404(proxy: RunningProxy) -> None:
    response = httpx2.post(proxy.url("nope"), headers=MCP_HEADERS, json=INIT)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_mcp"


@pytest.mark.parametrize(
    ("method", "suffix", "allowed"),
    [("PUT", "", "GET, POST, DELETE"), ("POST", "/sse", "GET"), ("GET", "/messages", "POST")],
)
def test_wrong_methods_get_405_with_allow(proxy: RunningProxy, method: str, suffix: str, allowed: str) -> None:
    response = httpx2.request(method, proxy.url("demo", suffix), headers=MCP_HEADERS)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


def test_max_sessions_is_a_503_with_a_reason(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("capped", max_sessions=1)]) as proxy:
        initialize(proxy, "capped")
        response = httpx2.post(proxy.url("capped"), headers=MCP_HEADERS, json=INIT)
        assert response.status_code == 503
        assert "max_sessions" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("route", "method"),
    [
        ("/mcp/demo", "POST"),
        ("/mcp/demo/sse", "GET"),
        ("/mcp/demo/messages?session_id=x", "POST"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/.well-known/oauth-protected-resource/mcp/demo", "GET"),
    ],
)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Host": "evil.example.com"}, 421, id="foreign-host"),
        pytest.param({"Host": "evil.example.com", "Origin": "http://evil.example.com"}, 421, id="rebinding"),
        pytest.param({"Origin": "http://evil.example.com"}, 403, id="foreign-origin"),
        pytest.param({"Origin": "null"}, 403, id="null-origin"),
    ],
)
def test_foreign_host_or_origin_is_refused_on_every_route(
    proxy: RunningProxy, route: str, method: str, headers: dict[str, str], status: int
) -> None:
    response = httpx2.request(method, proxy.base + route, headers={**MCP_HEADERS, **headers}, content=b"{}")
    assert response.status_code == status
    assert response.json()["error"] in ("forbidden_host", "forbidden_origin")


def test_loopback_host_and_origin_are_accepted(proxy: RunningProxy) -> None:
    response = httpx2.post(
        proxy.url("demo"),
        headers={**MCP_HEADERS, "Host": f"localhost:{proxy.port}", "Origin": f"http://localhost:{proxy.port}"},
        json=INIT,
    )
    assert response.status_code == 200


def test_health_routes_answer_json(proxy: RunningProxy) -> None:
    assert httpx2.get(proxy.base + "/healthz").json() == {"status": "ok"}
    assert httpx2.get(proxy.base + "/readyz").json() == {"status": "ready"}


def test_a_modern_request_whose_headers_contradict_its_body_is_refused(proxy: RunningProxy) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
    }
    headers = {**MCP_HEADERS, "Mcp-Method": "tools/call", "MCP-Protocol-Version": "2026-07-28"}
    response = httpx2.post(proxy.url("demo"), headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


def test_a_discover_probe_is_relayed_to_the_upstream(proxy: RunningProxy) -> None:
    body = {"jsonrpc": "2.0", "id": "probe", "method": "server/discover", "params": {}}
    response = httpx2.post(proxy.url("demo"), headers=MCP_HEADERS, json=body)
    assert response.status_code == 200
    message = response.json()
    assert message["id"] == "probe"
    assert message["error"]["code"] == -32601  # the demo server is legacy-only and says so itself
    again = httpx2.post(proxy.url("demo"), headers=MCP_HEADERS, json={**body, "id": 2})
    assert again.json()["id"] == 2 and again.json()["error"] == message["error"]  # its verdict is kept
