"""upstream_auth identity_headers through a running proxy: each caller's identity, never its credential."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from aiohttp import web

from tests.proxy import RunningProxy, run_proxy
from tests.server.test_auth_e2e import RecordingUpstream
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
TOKENS = [
    {"id": "alice", "token": ALICE, "roles": ["reader", "writer"]},
    {"id": "bob", "token": BOB, "roles": ["admin"]},
]
MAPPING = {"X-Forwarded-User": "id", "X-Forwarded-Roles": "roles", "X-Subject": "sub"}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


class LegacySseRecorder(RecordingUpstream):
    """A legacy HTTP+SSE MCP server: GET /sse gives each connection its own message endpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/sse"
        self._queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._ids = itertools.count()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/sse", self.stream)
        app.router.add_post("/messages", self.message)
        app.on_shutdown.append(self._end_streams)

    async def _end_streams(self, app: web.Application) -> None:
        for queue in self._queues.values():
            queue.put_nowait(None)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        key = str(next(self._ids))
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._queues[key] = queue
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: endpoint\ndata: /messages?s={key}\n\n".encode())
        while (body := await queue.get()) is not None:
            await response.write(b"event: message\ndata: " + orjson.dumps(body) + b"\n\n")
        return response

    async def message(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        message: dict[str, Any] = await request.json()
        if "id" in message:
            await self._queues[request.query["s"]].put(self.reply(message))
        return web.Response(status=202)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, RecordingUpstream]]:
    recorders = {"isolated": RecordingUpstream(), "shared": RecordingUpstream(), "legacy": LegacySseRecorder()}
    with recorders["isolated"].serve(), recorders["shared"].serve(), recorders["legacy"].serve():
        yield recorders


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, RecordingUpstream]) -> Iterator[RunningProxy]:
    upstream_auth = {"type": "identity_headers", "identity_headers": MAPPING}
    common = {"headers": {"X-Static": "static"}, "upstream_auth": upstream_auth, "start_timeout": "5s"}
    mcps = [
        {"id": "isolated", "url": upstreams["isolated"].url, "transport": "streamable-http", **common},
        {
            "id": "shared",
            "url": upstreams["shared"].url,
            "transport": "streamable-http",
            "session_mode": "shared",
            **common,
        },
        {"id": "legacy", "url": upstreams["legacy"].url, "transport": "sse", **common},
    ]
    with run_proxy(tmp_path_factory.mktemp("identity"), mcps, auth={"type": "token", "tokens": TOKENS}) as running:
        yield running


def rpc(
    proxy: RunningProxy, mcp_id: str, token: str, body: dict[str, Any], session: str | None = None
) -> httpx2.Response:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    return httpx2.post(proxy.url(mcp_id), headers=headers, json=body, timeout=30)


def callers(recorded: list[dict[str, str]]) -> list[tuple[str | None, str | None]]:
    return [(h.get("X-Forwarded-User"), h.get("X-Forwarded-Roles")) for h in recorded]


@pytest.mark.parametrize("mcp_id", ["isolated", "shared", "legacy"])
def test_each_caller_is_named_upstream_and_its_credential_never_is(
    proxy: RunningProxy, upstreams: dict[str, RecordingUpstream], mcp_id: str
) -> None:
    recorded = upstreams[mcp_id].headers
    probe = len(recorded)
    alice = rpc(proxy, mcp_id, ALICE, INIT)
    assert alice.status_code == 200, alice.text
    bob = rpc(proxy, mcp_id, BOB, INIT)
    assert bob.status_code == 200, bob.text
    listed = rpc(proxy, mcp_id, ALICE, LIST, alice.headers["mcp-session-id"])
    assert listed.status_code == 200, listed.text
    assert "noop" in listed.text
    mine = recorded[probe:]
    assert set(callers(mine)) == {("token:alice", "reader,writer"), ("token:bob", "admin")}
    # Shared mode too: alice's call rides alice's upstream session, whatever bob opened meanwhile.
    assert callers(mine)[-1] == ("token:alice", "reader,writer")
    for headers in mine:
        assert headers["X-Static"] == "static"
        assert "X-Subject" not in headers  # a token principal has no `sub`: left out
        assert "Authorization" not in headers
        text = "\n".join(f"{name}: {value}" for name, value in headers.items())
        assert ALICE not in text and BOB not in text
    # The proxy's own probe carries no caller's identity.
    assert all(user is None for user, _ in callers(recorded[:probe]))


def test_a_claim_that_cannot_be_sent_is_logged_once_without_its_value(proxy: RunningProxy) -> None:
    for mcp_id in ("isolated", "shared", "legacy"):
        assert rpc(proxy, mcp_id, BOB, INIT).status_code == 200
    lines = [line for line in proxy.log_text().splitlines() if "identity header X-Subject left out" in line]
    assert len(lines) == 3, lines  # once per MCP, however many sessions
    assert "Traceback" not in proxy.log_text()


def test_sessionless_requests_are_refused_on_a_per_caller_mcp(proxy: RunningProxy) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
    }
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {ALICE}", "MCP-Protocol-Version": "2026-07-28"}
    headers |= {"Mcp-Method": "tools/list"}
    response = httpx2.post(proxy.url("isolated"), headers=headers, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "initialize a session first" in response.text
