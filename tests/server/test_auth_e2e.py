"""Authentication through a running proxy: the seed guide's scenarios, and what goes upstream."""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from aiohttp import web

from tests.proxy import AUTH_HEADER, TOKEN, RunningProxy, demo_mcp, free_port, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS
from tests.threaded_server import serve_in_thread

pytestmark = pytest.mark.e2e

ROTATED = [{"id": "old", "token": "old-token-0123456789"}, {"id": "new", "token": "new-token-0123456789"}]
EXPIRED = [{"id": "expired", "token": "expired-token-0123456789", "expires_at": "2020-01-01T00:00:00Z"}]


class RecordingUpstream:
    """A minimal Streamable HTTP MCP server on loopback that records every request's headers."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self.ssl_context = ssl_context
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}/mcp"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        if request.method != "POST":
            return web.Response(status=405)
        message: dict[str, Any] = await request.json()
        if "id" not in message:
            return web.Response(status=202)
        return web.json_response(self.reply(message), headers={"Mcp-Session-Id": "upstream-session"})

    @staticmethod
    def reply(message: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if message["method"] == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "recorder", "version": "1"},
            }
        elif message["method"] == "tools/list":
            result = {"tools": [{"name": "noop", "inputSchema": {"type": "object"}}]}
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/mcp", self.handle)

    @contextlib.contextmanager
    def serve(self) -> Iterator[None]:
        """Run the server on its own event loop in a thread for as long as the generator lives."""
        app = web.Application()
        self.add_routes(app)
        with serve_in_thread(app, self.port, ssl_context=self.ssl_context):
            yield


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    with upstream.serve():
        yield upstream


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, recorder: RecordingUpstream) -> Iterator[RunningProxy]:
    mcps = [
        demo_mcp("demo"),
        {**demo_mcp("rotated"), "auth": {"type": "token", "tokens": ROTATED}},
        {**demo_mcp("expired"), "auth": {"type": "token", "tokens": EXPIRED}},
        {
            **demo_mcp("scoped"),
            "auth": {
                "type": "token",
                "tokens": [{"id": "only-demo", "token": "scoped-token-0123456789", "mcps": ["demo"]}],
            },
        },
        {
            "id": "remote",
            "url": recorder.url,
            "transport": "streamable-http",
            "headers": {"X-Upstream-Key": "upstream-secret"},
        },
        {**demo_mcp("open"), "auth": {"type": "none"}},
    ]
    with run_proxy(tmp_path_factory.mktemp("auth"), mcps) as running:
        yield running


def raw_post(proxy: RunningProxy, mcp_id: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """POST with header values httpx would refuse to send (trailing spaces, non-ASCII bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    base = {k: v for k, v in MCP_HEADERS.items() if k != "Authorization"}
    connection.request("POST", f"/mcp/{mcp_id}", body=orjson.dumps(INIT), headers={**base, **headers})
    response = connection.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, orjson.loads(response.read())
    connection.close()
    return result


def post(proxy: RunningProxy, mcp_id: str, headers: dict[str, str], url_suffix: str = "") -> httpx2.Response:
    base = {k: v for k, v in MCP_HEADERS.items() if k != "Authorization"}
    return httpx2.post(proxy.url(mcp_id) + url_suffix, headers={**base, **headers}, json=INIT)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        pytest.param(None, "missing credentials", id="missing"),
        pytest.param("", "missing credentials", id="empty"),
        pytest.param("Bearer", "malformed credentials", id="bearer-only"),
        pytest.param("Bearer ", "malformed credentials", id="bearer-space"),
        pytest.param("Basic x", "malformed credentials", id="basic"),
        pytest.param("InvalidFormat", "malformed credentials", id="invalid-format"),
        pytest.param("Bearer wrong-token", "invalid token", id="invalid"),
        pytest.param(f"Bearer {TOKEN}x", "invalid token", id="near-miss"),
    ],
)
def test_bad_credentials_get_401_with_a_challenge_and_a_reason(
    proxy: RunningProxy, authorization: str | None, reason: str
) -> None:
    status, headers, body = raw_post(proxy, "demo", {} if authorization is None else {"Authorization": authorization})
    assert status == 401
    assert headers["www-authenticate"].startswith('Bearer realm="demo"')
    assert body == {"error": "invalid_token", "message": reason}


def test_a_non_ascii_credential_gets_401(proxy: RunningProxy) -> None:
    status, _headers, body = raw_post(proxy, "demo", {"Authorization": "Bearer tökén"})
    assert status == 401
    assert body["message"] == "malformed credentials"


def test_a_valid_token_opens_the_mcp(proxy: RunningProxy) -> None:
    assert post(proxy, "demo", AUTH_HEADER).status_code == 200


def test_a_token_in_the_query_string_is_never_accepted(proxy: RunningProxy) -> None:
    response = post(proxy, "demo", {}, f"?token={TOKEN}&access_token={TOKEN}")
    assert response.status_code == 401


def test_several_tokens_are_valid_at_once_for_rotation(proxy: RunningProxy) -> None:
    for token in ("old-token-0123456789", "new-token-0123456789"):
        assert post(proxy, "rotated", {"Authorization": f"Bearer {token}"}).status_code == 200
    assert post(proxy, "rotated", AUTH_HEADER).status_code == 401


def test_an_expired_token_gets_401(proxy: RunningProxy) -> None:
    response = post(proxy, "expired", {"Authorization": "Bearer expired-token-0123456789"})
    assert response.status_code == 401
    assert response.json()["message"] == "token expired"


def test_a_token_scoped_to_another_mcp_gets_403(proxy: RunningProxy) -> None:
    response = post(proxy, "scoped", {"Authorization": "Bearer scoped-token-0123456789"})
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"


def test_the_client_credential_never_reaches_the_upstream_but_configured_headers_do(
    proxy: RunningProxy, recorder: RecordingUpstream
) -> None:
    recorder.headers.clear()
    response = post(proxy, "remote", AUTH_HEADER)
    assert response.status_code == 200, response.text
    assert recorder.headers, "the upstream saw no request"
    for seen in recorder.headers:
        assert "Authorization" not in seen and TOKEN not in str(seen)
        assert seen["X-Upstream-Key"] == "upstream-secret"


def test_the_mcp_list_shows_what_the_credential_reaches(proxy: RunningProxy) -> None:
    listing = httpx2.get(proxy.base + "/api/v1/mcp/list", headers=AUTH_HEADER).json()
    assert sorted(m["id"] for m in listing["mcps"]) == ["demo", "open", "remote"]
    assert all(m["status"] == "ready" for m in listing["mcps"])
    assert next(m for m in listing["mcps"] if m["id"] == "demo")["tool_count"] == 6
    rotated = httpx2.get(proxy.base + "/api/v1/mcp/list", headers={"Authorization": "Bearer old-token-0123456789"})
    assert sorted(m["id"] for m in rotated.json()["mcps"]) == ["open", "rotated"]


def test_the_mcp_list_without_any_reachable_mcp_is_401(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")]) as proxy:
        response = httpx2.get(proxy.base + "/api/v1/mcp/list", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(None, 401, id="no-token"),
        pytest.param(f"Bearer {TOKEN}", 401, id="client-token"),
        pytest.param("Bearer admin-token-0123456789abcdef", 200, id="admin-token-reaches-the-admin-plane"),
    ],
)
def test_the_admin_plane_takes_only_admin_tokens(
    admin_proxy: RunningProxy, authorization: str | None, status: int
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx2.get(admin_proxy.base + "/admin/mcps", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert [mcp["definition"]["id"] for mcp in response.json()["mcps"]] == ["demo"]
    else:
        assert "error" in response.json()


def test_an_admin_token_is_not_a_client_credential(admin_proxy: RunningProxy) -> None:
    response = post(admin_proxy, "demo", {"Authorization": "Bearer admin-token-0123456789abcdef"})
    assert response.status_code == 401


def test_the_admin_plane_refuses_addresses_off_its_list(tmp_path: Path) -> None:
    server = {"admin": {"token": "admin-token-0123456789abcdef", "ip_whitelist": ["10.9.9.9"]}}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as proxy:
        response = httpx2.get(
            proxy.base + "/admin/mcps", headers={"Authorization": "Bearer admin-token-0123456789abcdef"}
        )
    assert response.status_code == 403
    assert response.json()["error"] == "ip_blocked"


@pytest.fixture(scope="module")
def admin_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    server = {"admin": {"token": "admin-token-0123456789abcdef"}}
    with run_proxy(tmp_path_factory.mktemp("admin"), [demo_mcp("demo")], server=server) as running:
        yield running
