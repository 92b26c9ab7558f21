"""The aggregated endpoint `/mcp` under attack: credentials, sessions, names, cursors, rate limits, headers.

Every answer is compared with what `/mcp/{id}` gives for the same mistake: `/mcp` must not tell a
caller more (an MCP it does not reach looks like a name that does not exist) nor let it do more.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import mcp_types as types
import pytest

from tests.proxy import TOKEN, RunningProxy, demo_mcp, mcp_client, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS, sse_messages
from tests.server.test_session_quota import SseStream

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"  # the listed tokens of MCP `private` only
TRUSTED = {"trusted_proxies": ["127.0.0.1"], "security": {"auth_failure_ban": {"enabled": False}}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [
        demo_mcp("demo", tool_filter={"mode": "block", "list": ["whoami"]}),
        # One token per 10 s per address: the calls of one test never span a refill.
        demo_mcp("limited", security={"rate_limit": {"per_ip_requests_per_minute": 6, "per_ip_burst_size": 2}}),
        {
            **demo_mcp("private"),
            "auth": {"type": "token", "tokens": [{"id": "alice", "token": ALICE}, {"id": "bob", "token": BOB}]},
        },
    ]
    with run_proxy(tmp_path_factory.mktemp("aggregate-attacks"), mcps, server=TRUSTED) as running:
        yield running


class Session:
    """A raw client session of `/mcp` (status codes and headers in view)."""

    def __init__(self, proxy: RunningProxy, headers: dict[str, str]) -> None:
        self.url = f"{proxy.base}/mcp"
        self.headers = {**MCP_HEADERS, **headers}
        opened = httpx2.post(self.url, headers=self.headers, json=INIT, timeout=30)
        assert opened.status_code == 200, opened.text
        assert sse_messages(opened.text)[0]["result"]["serverInfo"]["name"] == "mcp-barbican"
        self.id = opened.headers["mcp-session-id"]
        self.headers |= {"Mcp-Session-Id": self.id, "MCP-Protocol-Version": "2025-11-25"}
        initialized = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert initialized.status_code == 202, initialized.text
        self._next = 1

    def post(self, body: dict[str, Any], **headers: str) -> httpx2.Response:
        return httpx2.post(self.url, headers={**self.headers, **headers}, json=body, timeout=30)

    def request(self, method: str, params: dict[str, Any], **headers: str) -> httpx2.Response:
        self._next += 1
        return self.post({"jsonrpc": "2.0", "id": self._next, "method": method, "params": params}, **headers)

    def answer(self, method: str, params: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.request(method, params, **headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = sse_messages(response.text)[-1]
        return answer

    def call(self, name: str, **headers: str) -> dict[str, Any]:
        return self.answer("tools/call", {"name": name, "arguments": {"message": "hi"}}, **headers)


def unknown_tool(name: str) -> dict[str, Any]:
    return {"code": -32602, "message": f"Unknown tool: {name!r} is not available through this proxy"}


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize("sent", [bearer("not-a-token-of-anyone"), {}], ids=["wrong", "none"])
def test_a_credential_no_mcp_accepts_is_401_with_a_challenge(proxy: RunningProxy, sent: dict[str, str]) -> None:
    headers = {k: v for k, v in MCP_HEADERS.items() if k != "Authorization"} | sent
    response = httpx2.post(f"{proxy.base}/mcp", headers=headers, json=INIT, timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert response.json()["error"] == "invalid_token"


def test_a_repeated_authorization_header_is_400(proxy: RunningProxy) -> None:
    headers = [(k, v) for k, v in MCP_HEADERS.items() if k != "Authorization"]
    headers += [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {ALICE}")]
    response = httpx2.post(f"{proxy.base}/mcp", headers=headers, json=INIT, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_a_session_answers_only_the_principal_that_opened_it(proxy: RunningProxy) -> None:
    alice = Session(proxy, bearer(ALICE))
    assert alice.answer("ping", {})["result"] == {}
    for other in (BOB, TOKEN):
        stolen = alice.request("ping", {}, Authorization=f"Bearer {other}")
        assert stolen.status_code == 404, stolen.text
        assert stolen.json()["error"]["message"]
    assert alice.call("private__echo")["result"]["content"][0]["text"] == "hi"


def test_a_legacy_sse_session_answers_only_the_principal_that_opened_it(proxy: RunningProxy) -> None:
    assert SseStream(proxy, "/sse", "not-a-token-of-anyone").status == 401
    stream = SseStream(proxy, "/sse", ALICE)
    try:
        assert stream.status == 200
        url = f"{proxy.base}/messages?session_id={stream.session}"
        for other in (BOB, TOKEN):
            stolen = httpx2.post(url, headers=bearer(other), json=INIT, timeout=30)
            assert stolen.status_code == 404, stolen.text
        own = httpx2.post(url, headers=bearer(ALICE), json=INIT, timeout=30)
        assert own.status_code == 202, own.text
        stream.wait_for(b"mcp-barbican")  # the answer to initialize, on the stream
    finally:
        stream.close()


def test_names_the_caller_cannot_use_are_answered_like_unknown_tools(proxy: RunningProxy) -> None:
    session = Session(proxy, {})
    listed = {tool["name"] for tool in session.answer("tools/list", {})["result"]["tools"]}
    assert "demo__echo" in listed and not any(name.startswith("private__") for name in listed)
    assert "demo__whoami" not in listed  # the demo MCP's tool filter hides it
    for name in ("nosuch__echo", "private__echo", "echo", "demo__whoami", "__echo", "demo__"):
        assert session.call(name).get("error") == unknown_tool(name), name
    assert Session(proxy, bearer(ALICE)).call("private__echo")["result"]["content"][0]["text"] == "hi"


def test_prompts_and_resources_the_caller_cannot_use_are_answered_like_unknown_ones(proxy: RunningProxy) -> None:
    session = Session(proxy, {})
    for name in ("private__p", "nosuch__p", "p"):
        error = session.answer("prompts/get", {"name": name}).get("error")
        assert error == {"code": -32602, "message": f"Unknown prompt: {name!r} is not available through this proxy"}
    for uri in ("mcp-barbican://private/demo://x", "mcp-barbican://nosuch/demo://x", "demo://x", "mcp-barbican://demo"):
        error = session.answer("resources/read", {"uri": uri}).get("error")
        assert error == {"code": -32002, "message": f"Resource not found: {uri!r} is not available through this proxy"}


@pytest.mark.parametrize(
    "forged",
    ["garbage!", cursor({"private": "0"}), cursor({"nosuch": "0"}), cursor({}), cursor(["demo"])],
    ids=["not-base64", "unreached-mcp", "no-such-mcp", "empty-map", "not-a-map"],
)
def test_a_cursor_the_proxy_did_not_give_is_invalid_params(proxy: RunningProxy, forged: str) -> None:
    session = Session(proxy, {})
    answer = session.answer("tools/list", {"cursor": forged})
    assert answer.get("error") == {"code": -32602, "message": "Invalid cursor"}


def test_an_mcps_own_rate_limit_refuses_its_calls_only(proxy: RunningProxy) -> None:
    address = {"X-Forwarded-For": "10.7.7.7"}  # a bucket of its own in `limited`
    session = Session(proxy, address)
    answers = [session.request("tools/call", {"name": "limited__echo", "arguments": {"message": "x"}}, **address)]
    while answers[-1].status_code == 200 and len(answers) < 5:
        answers.append(
            session.request("tools/call", {"name": "limited__echo", "arguments": {"message": "x"}}, **address)
        )
    refused = answers[-1]
    assert [r.status_code for r in answers[:-1]] == [200, 200] and refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == -32029
    assert session.call("demo__echo", **address)["result"]["content"][0]["text"] == "hi"
    listed = {tool["name"] for tool in session.answer("tools/list", {}, **address)["result"]["tools"]}
    assert "demo__echo" in listed and not any(name.startswith("limited__") for name in listed)
    assert "MCP 'limited' left out of tools/list: HTTP 429" in proxy.log_text()


def test_a_deleted_session_is_gone(proxy: RunningProxy) -> None:
    session = Session(proxy, {})
    assert session.call("demo__echo")["result"]["content"][0]["text"] == "hi"
    deleted = httpx2.delete(session.url, headers=session.headers, timeout=30)
    assert deleted.status_code in (200, 204)
    assert session.request("ping", {}).status_code == 404


def test_sessionless_requests_are_refused(proxy: RunningProxy) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}
    response = httpx2.post(f"{proxy.base}/mcp", headers=MCP_HEADERS, json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600


@pytest.mark.anyio
async def test_the_demo_mcps_sample_tool_is_answered_by_the_client_through_the_aggregate(proxy: RunningProxy) -> None:
    prompts: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        prompts.append(content.text if isinstance(content, types.TextContent) else "?")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="forty-two"), model="test-model"
        )

    async with mcp_client(f"{proxy.base}/mcp", sampling_callback=sampling) as client:
        result = await client.call_tool("demo__sample", {"prompt": "the answer?"})
    assert prompts == ["the answer?"]
    assert isinstance(result.content[0], types.TextContent)
    assert result.content[0].text == "the client's model said: forty-two"


@pytest.mark.anyio
async def test_a_call_direct_and_through_the_aggregate_give_the_same_content(proxy: RunningProxy) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [("echo", {"message": "same"}), ("add", {"a": 2, "b": 3.5})]
    async with mcp_client(proxy.url("demo")) as client:
        direct = [(await client.call_tool(name, args)).model_dump() for name, args in calls]
    async with mcp_client(f"{proxy.base}/mcp") as client:
        through = [(await client.call_tool(f"demo__{name}", args)).model_dump() for name, args in calls]
    assert through == direct
