"""Per-MCP policies of the data plane: tool filters, security headers, idle session expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.proxy import RunningProxy, demo_mcp, mcp_client, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS, initialize

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [
        demo_mcp("filtered", tool_filter={"mode": "block", "list": ["sample", "eli*"]}),
        demo_mcp("allowlisted", tool_filter={"mode": "allow", "list": ["echo"]}),
        demo_mcp("framed", security={"headers": {"x_frame_options": "SAMEORIGIN", "csp": ""}}),
    ]
    with run_proxy(tmp_path_factory.mktemp("policies"), mcps, server={"session_idle_timeout": "2s"}) as running:
        yield running


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mcp_id", "visible", "hidden"),
    [
        ("filtered", {"echo", "add", "slow", "whoami"}, {"sample", "elicit"}),
        ("allowlisted", {"echo"}, {"add", "sample"}),
    ],
)
async def test_a_tool_filter_hides_tools_and_refuses_calls_to_them(
    proxy: RunningProxy, mcp_id: str, visible: set[str], hidden: set[str]
) -> None:
    async with mcp_client(proxy.url(mcp_id)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == visible
        for name in hidden:
            with pytest.raises(MCPError, match="not available through this proxy"):
                await client.call_tool(name, {"prompt": "x", "question": "x", "a": 1, "b": 2})
        assert (await client.call_tool("echo", {"message": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]


API_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-xss-protection": "0",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        pytest.param("GET", "/healthz", {}, 200, id="200"),
        pytest.param("POST", "/mcp/filtered", {"Authorization": "Bearer wrong"}, 401, id="401"),
        pytest.param("POST", "/mcp/filtered", {"Origin": "https://evil.example"}, 403, id="403"),
        pytest.param("GET", "/nowhere", {}, 404, id="404"),
        pytest.param("GET", "/healthz", {"Host": "evil.example"}, 421, id="421"),
    ],
)
def test_security_headers_are_on_every_response(
    proxy: RunningProxy, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = httpx2.request(method, proxy.base + path, headers={**MCP_HEADERS, **headers}, json=INIT)
    assert response.status_code == status
    for name, value in API_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "strict-transport-security" not in response.headers  # plain HTTP: HSTS means nothing


def test_security_headers_are_on_sse_answers_and_configurable_per_mcp(proxy: RunningProxy) -> None:
    response = httpx2.post(proxy.url("framed"), headers=MCP_HEADERS, json=INIT)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert "content-security-policy" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def test_an_idle_session_expires(proxy: RunningProxy) -> None:
    session = initialize(proxy, "filtered")
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
    assert httpx2.post(proxy.url("filtered"), headers=headers, json=ping).status_code == 200
    time.sleep(4)  # idle timeout 2 s, swept every second: any request now would count as activity
    assert httpx2.post(proxy.url("filtered"), headers=headers, json=ping).status_code == 404


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    limits = {"max_json_depth": 5, "max_string_length": 64, "max_header_size": 2048}
    mcps = [demo_mcp("demo", security={"limits": limits})]
    with run_proxy(tmp_path_factory.mktemp("limits"), mcps) as running:
        yield running


@pytest.mark.parametrize(
    ("arguments", "extra_headers", "status", "reason"),
    [
        pytest.param({"message": "ok"}, {}, 200, None, id="within"),
        pytest.param({"message": "x" * 65}, {}, 400, "longer than 64", id="long-string"),
        pytest.param({"message": {"a": {"b": {"c": "d"}}}}, {}, 400, "deeper than 5", id="deep"),
        pytest.param({"message": "ok"}, {"X-Padding": "p" * 3000}, 431, "headers are over", id="big-headers"),
    ],
)
def test_input_limits_answer_a_clear_error(
    limited: RunningProxy, arguments: dict[str, object], extra_headers: dict[str, str], status: int, reason: str | None
) -> None:
    session = initialize(limited, "demo")
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": arguments}}
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session, **extra_headers}
    response = httpx2.post(limited.url("demo"), headers=headers, json=body)
    assert response.status_code == status, response.text
    if reason is not None:
        assert reason in response.json()["error"]["message"]
