"""Authorization end to end: principals with different roles x every path x list and call.

The paths: `/mcp/{id}`, the aggregated `/mcp` (names `{id}__{name}`), `/admin/tools` and `/admin/tools/call`.
The demo MCP `demo` has its own policy; `plain` takes `server.authorization` (replaced, never merged).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from tests.proxy import RunningProxy, demo_mcp, mcp_client, run_proxy
from tests.server.test_endpoint import INIT, sse_messages

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "admin-token-authz-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOKENS = {
    "alice": ("alice-token-0123456789", ["admin"]),
    "bob": ("bob-token-0123456789", ["reader"]),
    "carol": ("carol-token-0123456789", ["bot"]),
    "dave": ("dave-token-0123456789", ["nobody"]),
}
DEMO_POLICY = {
    "policies": [
        {"roles": ["admin"], "allow": {"tools": ["*"]}},
        {"roles": ["reader"], "allow": {"tools": ["echo", "add", "whoami"]}, "deny": {"tools": ["add"]}},
        {"roles": ["bot"], "allow": {"tools": ["echo"]}, "when": "args.message.size() < 10"},
    ]
}
SERVER_POLICY = {"policies": [{"roles": ["admin"], "allow": {"tools": ["*"], "prompts": ["*"], "resources": ["*"]}}]}
ALL_TOOLS = {"echo", "add", "slow", "sample", "elicit", "whoami"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    tokens = [{"id": name, "token": token, "roles": roles} for name, (token, roles) in TOKENS.items()]
    server = {
        "admin": {"token": ADMIN_TOKEN},
        "authorization": SERVER_POLICY,
        "audit": {"sinks": [{"type": "sqlite"}]},
    }
    mcps = [
        demo_mcp("demo", authorization=DEMO_POLICY),
        demo_mcp("plain"),
        demo_mcp("shared", authorization=DEMO_POLICY, session_mode="shared"),
    ]
    auth = {"type": "token", "tokens": tokens}
    with run_proxy(tmp_path_factory.mktemp("authz"), mcps, server=server, auth=auth) as running:
        yield running


#: The `mcp` that stands for the aggregated endpoint `/mcp` (names there are `{id}__{name}`).
AGGREGATED = ""


def endpoint(proxy: RunningProxy, mcp: str) -> str:
    return proxy.url(mcp) if mcp != AGGREGATED else f"{proxy.base}/mcp"


def headers(who: str, session: str | None = None) -> dict[str, str]:
    sent = {
        "Authorization": f"Bearer {TOKENS[who][0]}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if session is not None:
        sent["Mcp-Session-Id"] = session
    return sent


def open_session(proxy: RunningProxy, who: str, mcp: str = "demo") -> str:
    response = httpx2.post(endpoint(proxy, mcp), headers=headers(who), json=INIT)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(endpoint(proxy, mcp), headers=headers(who, session), json=notified).status_code == 202
    return session


def rpc(proxy: RunningProxy, who: str, session: str, method: str, params: dict[str, Any], mcp: str = "demo") -> Any:
    body = {"jsonrpc": "2.0", "id": 5, "method": method, "params": params}
    response = httpx2.post(endpoint(proxy, mcp), headers=headers(who, session), content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_messages(response.text)[-1]


def tool_names(proxy: RunningProxy, who: str, mcp: str = "demo") -> set[str]:
    answer = rpc(proxy, who, open_session(proxy, who, mcp), "tools/list", {}, mcp)
    return {tool["name"] for tool in answer["result"]["tools"]}


def call(proxy: RunningProxy, who: str, session: str, tool: str, args: dict[str, Any], mcp: str = "demo") -> Any:
    return rpc(proxy, who, session, "tools/call", {"name": tool, "arguments": args}, mcp)


def unknown(tool: str) -> dict[str, Any]:
    """What a tool the caller may not use answers: the tool filter's answer to a name it hides."""
    return {"code": -32602, "message": f"Unknown tool: {tool!r} is not available through this proxy"}


@pytest.mark.parametrize(
    ("who", "mcp", "visible"),
    [
        ("alice", "demo", ALL_TOOLS),
        ("bob", "demo", {"echo", "whoami"}),  # add: allowed and denied, deny wins
        ("carol", "demo", {"echo"}),  # its `when` reads the arguments: listed, the call decides
        ("alice", "plain", ALL_TOOLS),  # server.authorization
        ("bob", "shared", {"echo", "whoami"}),  # one upstream session per principal: filtered per request
        ("carol", "shared", {"echo"}),
    ],
)
def test_listings_show_what_the_caller_may_use(proxy: RunningProxy, who: str, mcp: str, visible: set[str]) -> None:
    assert tool_names(proxy, who, mcp) == visible


@pytest.mark.parametrize(
    ("who", "tool", "args", "allowed"),
    [
        ("alice", "add", {"a": 1, "b": 2}, True),
        ("bob", "echo", {"message": "hi"}, True),
        ("bob", "add", {"a": 1, "b": 2}, False),
        ("bob", "slow", {"seconds": 0}, False),
        ("bob", "ECHO", {"message": "hi"}, False),  # a name in another case is another name
        ("carol", "echo", {"message": "short"}, True),  # `when` true
        ("carol", "echo", {"message": "far too long for the bot"}, False),  # `when` false
        ("carol", "echo", {}, False),  # `when` fails to evaluate: denied
        ("carol", "echo", {"message": "x" * 2_000_000}, False),  # enormous arguments: decided, refused
        ("carol", "whoami", {}, False),
    ],
)
def test_calls_are_decided_and_a_denied_one_answers_like_an_unknown_name(
    proxy: RunningProxy, who: str, tool: str, args: dict[str, Any], allowed: bool
) -> None:
    answer = call(proxy, who, open_session(proxy, who), tool, args)
    if allowed:
        assert "result" in answer and not answer["result"].get("isError"), answer
    else:
        assert answer["error"] == unknown(tool)


def test_a_denied_name_and_a_missing_name_answer_alike(proxy: RunningProxy) -> None:
    session = open_session(proxy, "bob")
    denied, missing = call(proxy, "bob", session, "add", {}), call(proxy, "bob", session, "nonexistent", {})
    assert denied["error"]["code"] == missing["error"]["code"]
    assert denied["error"]["message"].replace("'add'", "X") == missing["error"]["message"].replace("'nonexistent'", "X")


@pytest.mark.parametrize(
    ("method", "params", "code", "text"),
    [
        ("prompts/get", {"name": "add"}, -32602, "Unknown prompt: 'add'"),
        ("resources/read", {"uri": "add"}, -32002, "Resource not found: 'add'"),
        ("resources/subscribe", {"uri": "file:///add"}, -32002, "Resource not found: 'file:///add'"),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "add"}, "argument": {}}, -32602, "prompt"),
    ],
)
def test_other_routes_to_a_name_are_refused_alike(
    proxy: RunningProxy, method: str, params: dict[str, Any], code: int, text: str
) -> None:
    answer = rpc(proxy, "bob", open_session(proxy, "bob"), method, params)
    assert answer["error"]["code"] == code
    assert text in answer["error"]["message"] and "not available through this proxy" in answer["error"]["message"]


def test_a_session_opened_by_another_principal_is_not_found(proxy: RunningProxy) -> None:
    session = open_session(proxy, "alice")
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 1}}}
    response = httpx2.post(proxy.url("demo"), headers=headers("bob", session), json=body)
    assert response.status_code == 404


@pytest.mark.parametrize(("who", "mcp"), [("dave", "demo"), ("bob", "plain"), ("carol", "plain")])
def test_a_caller_allowed_nothing_gets_403_insufficient_scope(proxy: RunningProxy, who: str, mcp: str) -> None:
    response = httpx2.post(proxy.url(mcp), headers=headers(who), json=INIT)
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert who in response.json()["message"]


def admin_tools(proxy: RunningProxy, query: str = "") -> set[tuple[str, str]]:
    response = httpx2.get(f"{proxy.base}/admin/tools{query}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {(tool["mcpName"], tool["name"]) for tool in response.json()["tools"]}


def on(mcps: tuple[str, ...], tools: set[str]) -> set[tuple[str, str]]:
    return {(mcp, tool) for mcp in mcps for tool in tools}


@pytest.mark.parametrize(
    ("query", "visible"),
    [
        ("", on(("demo", "plain", "shared"), ALL_TOOLS)),  # admin:0 with the role admin
        ("?principal=token:bob", on(("demo", "shared"), {"echo", "whoami"})),
        ("?principal=token:carol", on(("demo", "shared"), {"echo"})),
        ("?principal=token:dave", set()),
        ("?principal=jwt:issuer:someone&roles=reader", on(("demo", "shared"), {"echo", "whoami"})),
    ],
)
def test_admin_tools_answer_as_the_principal_would_see(proxy: RunningProxy, query: str, visible: set[Any]) -> None:
    assert admin_tools(proxy, query) == visible


@pytest.mark.parametrize(
    ("principal", "tool", "args", "status"),
    [
        (None, "add", {"a": 1, "b": 2}, 200),
        ("token:alice", "add", {"a": 1, "b": 2}, 200),
        ("token:bob", "add", {"a": 1, "b": 2}, 403),
        ("token:bob", "echo", {"message": "hi"}, 200),
        ("token:carol", "echo", {"message": "short"}, 200),
        ("token:carol", "echo", {"message": "far too long for the bot"}, 403),
        ("token:dave", "echo", {"message": "hi"}, 403),
        ("jwt:https://idp.test:someone", "echo", {"message": "hi"}, 403),
        ("jwt:https://idp.test:someone reader", "echo", {"message": "hi"}, 200),  # with the roles it would carry
        ("jwt:https://idp.test:someone reader", "add", {"a": 1, "b": 2}, 403),
    ],
)
def test_admin_tool_calls_are_decided_as_the_principal(
    proxy: RunningProxy, principal: str | None, tool: str, args: dict[str, Any], status: int
) -> None:
    body: dict[str, Any] = {"mcpName": "demo", "toolName": tool, "arguments": args}
    if principal is not None:
        body["principal"], *roles = principal.split()
        body["roles"] = roles
    response = httpx2.post(f"{proxy.base}/admin/tools/call", headers=ADMIN, json=body)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("query", "allowed", "rule"),
    [
        ("principal=token:bob&mcp=demo&tool=add", False, 1),
        ("principal=token:bob&mcp=demo&tool=echo", True, 1),
        ("principal=token:dave&mcp=demo&tool=echo", False, None),
        ("principal=token:carol&mcp=demo&tool=echo", True, 2),
        ("mcp=plain&tool=anything", True, 0),
    ],
)
def test_explain_names_the_rule_that_decided(proxy: RunningProxy, query: str, allowed: bool, rule: int | None) -> None:
    response = httpx2.get(f"{proxy.base}/admin/authorization/explain?{query}", headers=ADMIN)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["allowed"] is allowed
    assert (answer["rule"] or {}).get("index") == rule
    if rule is None:
        assert "default deny" in answer["reason"]


def test_explain_refuses_unknown_mcps_and_missing_names(proxy: RunningProxy) -> None:
    base = f"{proxy.base}/admin/authorization/explain"
    assert httpx2.get(f"{base}?mcp=nowhere&tool=x", headers=ADMIN).status_code == 404
    assert httpx2.get(f"{base}?mcp=demo", headers=ADMIN).status_code == 400


def test_denials_are_counted_and_audited(proxy: RunningProxy) -> None:
    call(proxy, "bob", open_session(proxy, "bob"), "add", {"a": 1, "b": 2})
    metrics = httpx2.get(f"{proxy.base}/metrics", headers=ADMIN).text
    line = next(line for line in metrics.splitlines() if line.startswith("mcp_barbican_authorization_denied_total"))
    assert float(line.split()[-1]) >= 1
    events = httpx2.get(f"{proxy.base}/admin/audit?type=authorization", headers=ADMIN).json()["events"]
    assert any(e["user"] == "token:bob" and not e["success"] and e["tool"] == "add" for e in events)


@pytest.mark.parametrize(
    ("who", "listed"), [("alice", {"demo", "plain", "shared"}), ("bob", {"demo", "shared"}), ("dave", set())]
)
def test_the_mcp_list_shows_the_mcps_the_caller_may_use(proxy: RunningProxy, who: str, listed: set[str]) -> None:
    response = httpx2.get(f"{proxy.base}/api/v1/mcp/list", headers={"Authorization": f"Bearer {TOKENS[who][0]}"})
    assert response.status_code == 200
    assert {mcp["id"] for mcp in response.json()["mcps"]} == listed


@pytest.mark.anyio
@pytest.mark.parametrize("mcp", ["demo", "shared"])
async def test_legacy_sse_sessions_are_decided_alike(proxy: RunningProxy, mcp: str) -> None:
    sent = {"Authorization": f"Bearer {TOKENS['bob'][0]}"}
    async with mcp_client(proxy.url(mcp, "/sse"), transport="sse", headers=sent) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == {"echo", "whoami"}
        with pytest.raises(MCPError, match="Unknown tool: 'add' is not available through this proxy"):
            await client.call_tool("add", {"a": 1, "b": 2})
        assert (await client.call_tool("echo", {"message": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]


# -- the aggregated endpoint `/mcp`: the same principals and policies, names `{id}__{name}` --------------


def prefixed(mcps: tuple[str, ...], tools: set[str]) -> set[str]:
    return {f"{mcp}__{tool}" for mcp in mcps for tool in tools}


@pytest.mark.parametrize(
    ("who", "visible"),
    [
        ("alice", prefixed(("demo", "plain", "shared"), ALL_TOOLS)),
        ("bob", prefixed(("demo", "shared"), {"echo", "whoami"})),  # plain: server.authorization grants bob nothing
        ("carol", prefixed(("demo", "shared"), {"echo"})),
    ],
)
def test_the_aggregated_listing_shows_what_the_caller_may_use_of_every_mcp(
    proxy: RunningProxy, who: str, visible: set[str]
) -> None:
    assert tool_names(proxy, who, AGGREGATED) == visible


def refused_like_an_unknown_name(answer: Any) -> bool:
    error = answer.get("error") or {}
    return error.get("code") == -32602 and str(error.get("message")).endswith("is not available through this proxy")


@pytest.mark.parametrize(
    ("who", "tool", "args", "allowed"),
    [
        ("alice", "demo__add", {"a": 1, "b": 2}, True),
        ("alice", "plain__add", {"a": 1, "b": 2}, True),  # server.authorization
        ("alice", "shared__add", {"a": 1, "b": 2}, True),
        ("bob", "demo__echo", {"message": "hi"}, True),
        ("bob", "demo__add", {"a": 1, "b": 2}, False),  # allowed and denied: deny wins
        ("bob", "demo__slow", {"seconds": 0}, False),
        ("bob", "demo__ECHO", {"message": "hi"}, False),
        ("bob", "DEMO__echo", {"message": "hi"}, False),  # an MCP id in another case is another id
        ("bob", "echo", {"message": "hi"}, False),  # no prefix: no MCP
        ("bob", "plain__echo", {"message": "hi"}, False),  # an MCP that grants bob nothing is no member
        ("bob", "shared__echo", {"message": "hi"}, True),
        ("bob", "shared__add", {"a": 1, "b": 2}, False),
        ("carol", "demo__echo", {"message": "short"}, True),  # `when` true
        ("carol", "demo__echo", {"message": "far too long for the bot"}, False),  # `when` false
        ("carol", "demo__echo", {}, False),  # `when` fails to evaluate: denied
        ("carol", "shared__echo", {"message": "short"}, True),
        ("carol", "shared__echo", {"message": "far too long for the bot"}, False),
        ("carol", "demo__whoami", {}, False),
        ("carol", "plain__echo", {"message": "short"}, False),
    ],
)
def test_aggregated_calls_are_decided_as_on_the_mcps_own_endpoint(
    proxy: RunningProxy, who: str, tool: str, args: dict[str, Any], allowed: bool
) -> None:
    answer = call(proxy, who, open_session(proxy, who, AGGREGATED), tool, args, AGGREGATED)
    if allowed:
        assert "result" in answer and not answer["result"].get("isError"), answer
        if tool.endswith("__echo"):
            assert answer["result"]["content"][0]["text"] == args["message"]
    else:
        assert refused_like_an_unknown_name(answer), answer


def test_aggregated_denied_and_missing_names_answer_alike(proxy: RunningProxy) -> None:
    session = open_session(proxy, "bob", AGGREGATED)

    def error(tool: str) -> dict[str, Any]:
        return dict(call(proxy, "bob", session, tool, {}, AGGREGATED)["error"])

    denied, missing = error("demo__add"), error("demo__nonexistent")  # a member's names
    assert denied["message"].replace("'demo__add'", "X") == missing["message"].replace("'demo__nonexistent'", "X")
    not_granted, nowhere = error("plain__echo"), error("nowhere__echo")  # an MCP bob may not use, and none
    assert not_granted["message"].replace("plain", "X") == nowhere["message"].replace("nowhere", "X")
    assert denied["code"] == missing["code"] == not_granted["code"] == nowhere["code"] == -32602


@pytest.mark.parametrize(
    ("method", "params", "code", "text"),
    [
        ("prompts/get", {"name": "demo__add"}, -32602, "Unknown prompt: "),
        ("resources/read", {"uri": "mcp-barbican://demo/add"}, -32002, "Resource not found: "),
        ("resources/subscribe", {"uri": "mcp-barbican://demo/file:///add"}, -32002, "Resource not found: "),
        ("resources/read", {"uri": "mcp-barbican://plain/add"}, -32002, "Resource not found: "),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "demo__add"}, "argument": {}}, -32602, "prompt"),
    ],
)
def test_aggregated_routes_to_a_name_are_refused_alike(
    proxy: RunningProxy, method: str, params: dict[str, Any], code: int, text: str
) -> None:
    answer = rpc(proxy, "bob", open_session(proxy, "bob", AGGREGATED), method, params, AGGREGATED)
    assert answer["error"]["code"] == code
    assert text in answer["error"]["message"] and "not available through this proxy" in answer["error"]["message"]


def test_a_caller_allowed_nothing_anywhere_gets_403_insufficient_scope_on_the_aggregated_endpoint(
    proxy: RunningProxy,
) -> None:
    before = denied_total(proxy)
    response = httpx2.post(endpoint(proxy, AGGREGATED), headers=headers("dave"), json=INIT)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insufficient_scope"
    assert denied_total(proxy) == before + 1


def denied_total(proxy: RunningProxy) -> float:
    metrics = httpx2.get(f"{proxy.base}/metrics", headers=ADMIN).text
    line = next(line for line in metrics.splitlines() if line.startswith("mcp_barbican_authorization_denied_total"))
    return float(line.split()[-1])


def test_an_aggregated_session_is_not_found_for_another_principal(proxy: RunningProxy) -> None:
    session = open_session(proxy, "alice", AGGREGATED)
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "demo__add", "arguments": {}}}
    response = httpx2.post(endpoint(proxy, AGGREGATED), headers=headers("bob", session), json=body)
    assert response.status_code == 404


def test_aggregated_denials_are_audited_with_the_mcp_and_its_tool(proxy: RunningProxy) -> None:
    session = open_session(proxy, "carol", AGGREGATED)
    answer = call(
        proxy, "carol", session, "shared__echo", {"message": "far too long for the aggregated call"}, AGGREGATED
    )
    assert refused_like_an_unknown_name(answer)
    events = httpx2.get(f"{proxy.base}/admin/audit?type=authorization", headers=ADMIN).json()["events"]
    assert any(
        e["user"] == "token:carol" and not e["success"] and e["mcp"] == "shared" and e["tool"] == "echo" for e in events
    ), events


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "transport"), [("/mcp", "streamable"), ("/sse", "sse")])
async def test_the_sdk_client_on_the_aggregated_endpoint_sees_and_calls_what_the_policy_says(
    proxy: RunningProxy, path: str, transport: str
) -> None:
    sent = {"Authorization": f"Bearer {TOKENS['carol'][0]}"}
    async with mcp_client(proxy.base + path, transport=transport, headers=sent) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == {"demo__echo", "shared__echo"}
        with pytest.raises(MCPError, match="is not available through this proxy"):
            await client.call_tool("demo__echo", {"message": "far too long for the bot"})
        with pytest.raises(MCPError, match="is not available through this proxy"):
            await client.call_tool("plain__echo", {"message": "ok"})
        assert (await client.call_tool("shared__echo", {"message": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
