"""Roles from a JWT through the real proxy: `roles_claim` (a dotted path) and OAuth scopes via `scope_roles`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import jwt
import pytest

from tests.proxy import RunningProxy, demo_mcp, run_proxy
from tests.server.test_authorization import DEMO_POLICY
from tests.server.test_endpoint import INIT, sse_messages

pytestmark = pytest.mark.e2e

SECRET = "authorization-jwt-secret-0123456789abcdef"
AUTH = {"type": "jwt", "jwt": {"secret": SECRET, "algorithms": ["HS256"], "issuer": "https://idp.test"}}
POLICY = {**DEMO_POLICY, "roles_claim": "realm_access.roles", "scope_roles": {"mcp:read": ["reader"]}}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [demo_mcp("demo", authorization=POLICY)]
    with run_proxy(tmp_path_factory.mktemp("authz-jwt"), mcps, auth=AUTH) as running:
        yield running


def token(**claims: Any) -> str:
    base = {"sub": "someone", "iss": "https://idp.test", "exp": int(time.time()) + 600}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def tools(proxy: RunningProxy, bearer: str) -> set[str] | int:
    headers = {
        "Authorization": f"Bearer {bearer}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    opened = httpx2.post(proxy.url("demo"), headers=headers, json=INIT)
    if opened.status_code != 200:
        return opened.status_code
    headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
    httpx2.post(proxy.url("demo"), headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    listed = httpx2.post(proxy.url("demo"), headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    return {tool["name"] for tool in sse_messages(listed.text)[-1]["result"]["tools"]}


@pytest.mark.parametrize(
    ("claims", "seen"),
    [
        ({"realm_access": {"roles": ["reader"]}}, {"echo", "whoami"}),
        ({"realm_access": {"roles": ["bot"]}}, {"echo"}),
        ({"roles": ["admin"]}, 403),  # roles_claim is set: the `roles` claim grants nothing here
        ({"scope": "openid mcp:read"}, {"echo", "whoami"}),  # a scope mapped to a role
        ({"scope": "openid"}, 403),
    ],
)
def test_jwt_roles_come_from_the_claim_path_and_the_scopes(
    proxy: RunningProxy, claims: dict[str, Any], seen: set[str] | int
) -> None:
    assert tools(proxy, token(**claims)) == seen
