"""The gate: a message bound for a member passes that MCP's own pipeline, on a copy of the request's scope."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_barbican.config import ProxyConfig, validate_model
from mcp_barbican.security.authorization import ACCESS_KEY, Access
from mcp_barbican.security.pipeline import Pipeline
from mcp_barbican.security.principal import Principal
from mcp_barbican.server.aggregate.gate import Refusal, through
from mcp_barbican.server.control import McpRoute
from mcp_barbican.server.endpoint import GATE_KEY
from mcp_barbican.server.reach import Reach, reach
from mcp_barbican.server.shields import Shields
from mcp_barbican.types import Scope
from tests.security.asgi import make_scope

READER = "reader-token-0123456789"
IDLE = "idle-token-0123456789"
TOKENS = [{"id": "reader", "token": READER, "roles": ["reader"]}, {"id": "idle", "token": IDLE, "roles": ["idle"]}]
POLICY = {
    "policies": [
        {"roles": ["reader"], "allow": {"tools": ["echo"]}},
        {"principals": ["anonymous"], "allow": {"tools": ["whoami"]}},
    ]
}
CALL: jsonrpc.Message = {"jsonrpc": "2.0", "id": "call-7", "method": "tools/call", "params": {"name": "echo"}}


def routes(burst: int = 100) -> dict[str, McpRoute]:
    rate = {"per_ip_requests_per_minute": 1, "per_ip_burst_size": burst}
    mcps = [
        {
            "id": "guarded",
            "command": "true",
            "auth": {"type": "token", "tokens": TOKENS},
            "authorization": POLICY,
            "security": {"rate_limit": rate},
        },
        {"id": "open", "command": "true", "auth": {"type": "none"}, "authorization": POLICY},
    ]
    config = validate_model(ProxyConfig, {"server": {"storage": {"type": "memory"}}, "mcps": mcps})
    shields = Shields(config)
    return {mcp.id: McpRoute(mcp, config, shields) for mcp in config.mcps}


def aggregated_scope(credential: str | None) -> Scope:
    """A request to `/mcp` as the aggregated endpoint hands it to the gate."""
    headers = [("host", "127.0.0.1:6001"), ("content-type", "application/json")]
    headers += [("accept", "application/json, text/event-stream"), ("mcp-session-id", "s")]
    if credential is not None:
        headers.append(("authorization", f"Bearer {credential}"))
    scope = make_scope("POST", "/mcp", headers, client=("10.0.0.1", 40000))
    scope[CLIENT_IP_KEY] = "10.0.0.1"
    return scope


@pytest.mark.anyio
async def test_an_admitted_message_comes_back_with_the_principal_and_its_access() -> None:
    app = routes()["guarded"].app
    for path in ("layers", "fast path"):  # a credential seen once takes the fast path the second time
        scope = aggregated_scope(READER)
        admitted = await through(app, scope, CALL)
        assert not isinstance(admitted, Refusal), path
        principal = admitted[PRINCIPAL_KEY]
        assert isinstance(principal, Principal) and principal.id == "token:reader", path
        access = admitted[ACCESS_KEY]
        assert isinstance(access, Access) and access.principal is principal, path
        assert access.visible("tools", "echo") and not access.visible("tools", "whoami"), path
        assert not any(name == b"authorization" for name, _ in admitted["headers"]), "consumed in the copy"
        assert (b"authorization", f"Bearer {READER}".encode()) in scope["headers"], "the request keeps its own"
        assert PRINCIPAL_KEY not in scope and ACCESS_KEY not in scope and GATE_KEY not in scope, path


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["fast path", "layers"])
async def test_a_member_without_authentication_decides_as_on_its_own_route(path: str) -> None:
    """On `/mcp/open` the caller is anonymous; `/mcp` knows it from another MCP, but `open` does not."""
    table = routes()
    scope = aggregated_scope(READER)
    found = await reach(table.values(), scope)
    assert isinstance(found, Reach) and [route.mcp.id for route, _ in found.routes] == ["guarded", "open"]
    assert found.principal is not None
    scope[PRINCIPAL_KEY] = found.principal  # as the aggregated endpoint does before any gate
    pipeline = table["open"].app
    assert isinstance(pipeline, Pipeline)
    admitted = await through(pipeline if path == "fast path" else pipeline.layers, scope, CALL)
    assert not isinstance(admitted, Refusal)
    access = admitted[ACCESS_KEY]
    assert access.principal.id == "anonymous"
    assert access.visible("tools", "whoami") and not access.visible("tools", "echo")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("credential", "status", "error", "challenge"),
    [
        (None, 401, "invalid_token", True),
        ("wrong-token-0123456789", 401, "invalid_token", True),
        (IDLE, 403, "insufficient_scope", False),  # authenticated, allowed nothing
    ],
)
async def test_a_refusal_is_kept_whole_and_not_sent(
    credential: str | None, status: int, error: str, challenge: bool
) -> None:
    scope = aggregated_scope(credential)
    before = list(scope["headers"])
    refusal = await through(routes()["guarded"].app, scope, CALL)
    assert isinstance(refusal, Refusal)
    assert refusal.status == status
    assert jsonrpc.loads(refusal.body)["error"] == error
    assert any(name == b"www-authenticate" for name, _ in refusal.headers) is challenge
    assert refusal.reason.startswith(f"HTTP {status}: {error}")
    assert scope["headers"] == before


@pytest.mark.anyio
async def test_a_rate_limited_message_gets_the_429_with_retry_after_naming_its_request_id() -> None:
    app = routes(burst=2)["guarded"].app
    outcomes = [await through(app, aggregated_scope(READER), {**CALL, "id": n}) for n in range(3)]
    assert [isinstance(outcome, Refusal) for outcome in outcomes] == [False, False, True]
    refusal = outcomes[2]
    assert isinstance(refusal, Refusal)
    assert refusal.status == 429
    headers = dict(refusal.headers)
    assert int(headers[b"retry-after"]) >= 1
    assert headers[b"content-type"] == b"application/json"
    answer = jsonrpc.loads(refusal.body)
    assert answer["jsonrpc"] == "2.0" and answer["id"] == 2, "the body was replayed to the layer that answered"
    assert answer["error"]["message"] == "rate limit exceeded"
    assert refusal.reason == "HTTP 429: rate limit exceeded"

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await refusal.send_to(send)
    assert sent == [
        {"type": "http.response.start", "status": 429, "headers": refusal.headers},
        {"type": "http.response.body", "body": refusal.body},
    ]


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, b'{"error":"invalid_token","message":"no such token"}', "HTTP 401: invalid_token: no such token"),
        (429, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32029,"message":"slow down"}}', "HTTP 429: slow down"),
        (502, b"not json", "HTTP 502"),
        (500, b"", "HTTP 500"),
        (400, b"[1, 2]", "HTTP 400"),
        (403, b'{"error": 5}', "HTTP 403"),
        (403, b'{"error":"x","message":"' + b"m" * 500 + b'"}', "HTTP 403: x: " + "m" * 187),
    ],
)
def test_a_refusal_names_itself_in_a_few_words(status: int, body: bytes, reason: str) -> None:
    assert Refusal(status, [], body).reason == reason


@pytest.mark.anyio
async def test_the_gate_leaves_nothing_for_the_garbage_collector() -> None:
    """An admitted scope must not hold the gate's callback (a cycle): every message would leave garbage."""
    pipeline = routes()["guarded"].app
    assert isinstance(pipeline, Pipeline)
    await through(pipeline, aggregated_scope(READER), CALL)  # remember the credential: the fast path from here on
    for app in (pipeline, pipeline.layers):  # the fast path, and the layers with the endpoint handing back
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                admitted = await through(app, aggregated_scope(READER), CALL)
                assert not isinstance(admitted, Refusal) and GATE_KEY not in admitted
            del admitted
            assert gc.collect() == 0, app
        finally:
            gc.enable()
