"""MCPs registered, replaced and removed through the admin API, and tools called through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.admin.test_app import ADMIN_IPS, ADMIN_TOKEN, SECRET, SERVER, call, initialize, registration
from tests.proxy import AUTH_HEADER, TOKEN, RunningProxy, demo_mcp, mcp_client, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [demo_mcp("fixed", tool_filter={"mode": "block", "list": ["sample", "elicit"]})]
    with run_proxy(tmp_path_factory.mktemp("registry"), mcps, server=SERVER) as running:
        yield running


async def echo(proxy: RunningProxy, mcp_id: str) -> str:
    async with mcp_client(proxy.url(mcp_id)) as client:
        result = await client.call_tool("echo", {"message": "hi"})
        return str(result.content[0].text)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_register_call_replace_delete(proxy: RunningProxy) -> None:
    created = call(proxy, "POST", "/admin/mcps", registration("added"))
    assert created.status_code == 201, created.text
    assert created.json() == {"message": "MCP definition added successfully", "name": "added"}
    assert "hi" in await echo(proxy, "added")
    listed = call(proxy, "GET", "/admin/mcps")
    assert SECRET not in listed.text
    assert TOKEN not in listed.text
    entry = call(proxy, "GET", "/admin/mcps/added").json()
    assert entry["definition"]["env"] == {"DEMO_API_KEY": "********"}
    assert entry["status"]["source"] == "api"

    # A live session on the fixed MCP survives changes to the registered one.
    headers = {**MCP_HEADERS, **AUTH_HEADER}
    fixed = httpx2.post(proxy.url("fixed"), headers=headers, json=INIT)
    fixed_session = {**headers, "Mcp-Session-Id": fixed.headers["mcp-session-id"]}
    added = httpx2.post(proxy.url("added"), headers=headers, json=INIT)
    added_session = {**headers, "Mcp-Session-Id": added.headers["mcp-session-id"]}
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}

    replaced = call(proxy, "PUT", "/admin/mcps/added", registration("added", description="v2"))
    assert replaced.status_code == 200, replaced.text
    assert call(proxy, "GET", "/admin/mcps/added").json()["definition"]["description"] == "v2"
    assert httpx2.post(proxy.url("added"), headers=added_session, json=ping).status_code == 404  # its session ended
    assert "hi" in await echo(proxy, "added")

    assert call(proxy, "DELETE", "/admin/mcps/added").status_code == 204
    assert httpx2.post(proxy.url("added"), headers=headers, json=INIT).status_code == 404
    assert call(proxy, "GET", "/admin/mcps/added").status_code == 404
    assert httpx2.post(proxy.url("fixed"), headers=fixed_session, json=ping).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param("POST", "/admin/mcps", registration("fixed"), 409, id="create-over-config-id"),
        pytest.param("PUT", "/admin/mcps/fixed", registration("fixed"), 409, id="replace-config-mcp"),
        pytest.param("DELETE", "/admin/mcps/fixed", None, 409, id="delete-config-mcp"),
        pytest.param("PUT", "/admin/mcps/ghost", registration("ghost"), 404, id="replace-missing"),
        pytest.param("DELETE", "/admin/mcps/ghost", None, 404, id="delete-missing"),
        pytest.param("POST", "/admin/mcps", {**registration("x"), "id": "Bad Id"}, 400, id="bad-id"),
        pytest.param("POST", "/admin/mcps", {"id": "y", "command": "a", "url": "http://b"}, 400, id="url-and-cmd"),
        pytest.param("POST", "/admin/mcps", {**registration("w"), "autoReconnect": True}, 400, id="unknown-key"),
        pytest.param("PUT", "/admin/mcps/fixed2", {**registration("other")}, 400, id="id-mismatch"),
    ],
)
def test_registry_refusals(proxy: RunningProxy, method: str, path: str, body: Any, status: int) -> None:
    response = call(proxy, method, path, body)
    assert response.status_code == status, response.text
    assert response.json()["message"]


def test_concurrent_creates_of_one_id_have_one_winner(proxy: RunningProxy) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = pool.map(lambda _: call(proxy, "POST", "/admin/mcps", registration("raced")), range(8))
        statuses = [reply.status_code for reply in replies]
    assert sorted(statuses) == [201] + [409] * 7
    assert call(proxy, "DELETE", "/admin/mcps/raced").status_code == 204


def test_tools_are_listed_and_called_with_the_filter_applied(proxy: RunningProxy) -> None:
    tools = call(proxy, "GET", "/admin/tools").json()
    names = {(t["mcpName"], t["name"]) for t in tools["tools"]}
    assert ("fixed", "echo") in names
    assert ("fixed", "sample") not in names  # blocked by the tool filter
    assert all(t["inputSchema"] for t in tools["tools"])
    add = {"mcpName": "fixed", "toolName": "add", "arguments": {"a": 2, "b": 3}}
    result = call(proxy, "POST", "/admin/tools/call", add)
    assert result.status_code == 200, result.text
    body = result.json()["result"]
    assert body["content"][0]["type"] == "text"
    assert "5" in body["content"][0]["text"]
    assert body.get("isError") in (None, False)
    assert body["structuredContent"], "structured content is kept"
    blocked = call(proxy, "POST", "/admin/tools/call", {"mcpName": "fixed", "toolName": "sample", "arguments": {}})
    assert blocked.status_code == 403
    missing = call(proxy, "POST", "/admin/tools/call", {"mcpName": "nope", "toolName": "echo"})
    assert missing.status_code == 404
    unknown_tool = call(proxy, "POST", "/admin/tools/call", {"mcpName": "fixed", "toolName": "no-such-tool"})
    assert unknown_tool.status_code in (200, 502)
    if unknown_tool.status_code == 200:
        assert unknown_tool.json()["result"]["isError"] is True
    invalid = call(proxy, "POST", "/admin/tools/call", {"toolName": "echo"})
    assert invalid.status_code == 400
    assert "mcpName" in invalid.json()["message"]


def test_stdio_registrations_can_be_disabled(tmp_path: Path) -> None:
    server = {**SERVER, "admin": {"token": ADMIN_TOKEN, "ip_whitelist": ADMIN_IPS, "allow_stdio": False}}
    with run_proxy(tmp_path, [demo_mcp("fixed")], server=server) as proxy:
        refused = call(proxy, "POST", "/admin/mcps", registration("spawned"))
        assert refused.status_code == 403
        assert "allow_stdio" in refused.json()["message"]


def test_registrations_survive_a_restart(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("fixed")], server=SERVER) as first:
        assert call(first, "POST", "/admin/mcps", registration("kept")).status_code == 201
    with run_proxy(tmp_path, [demo_mcp("fixed")], server=SERVER) as second:
        assert call(second, "GET", "/admin/mcps/kept").json()["status"]["source"] == "api"
        assert initialize(second, TOKEN, "kept") == 200


def test_a_registration_naming_a_missing_file_is_refused(proxy: RunningProxy) -> None:
    body = {"id": "remote", "url": "https://mcp.example.com/mcp", "tls": {"ca_file": "missing-ca.pem"}}
    response = call(proxy, "POST", "/admin/mcps", body)
    assert response.status_code == 400, response.text
    assert response.json()["message"] == "tls.ca_file: cannot read missing-ca.pem: No such file or directory"
    assert call(proxy, "GET", "/admin/mcps/remote").status_code == 404
