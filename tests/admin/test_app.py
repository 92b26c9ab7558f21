"""The admin API against a running proxy: guards on every route, bodies validated, effects immediate."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.proxy import AUTH_HEADER, TOKEN, RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN_IPS = ["127.0.0.1", "10.20.0.0/16"]
SERVER: dict[str, Any] = {
    "admin": {"token": ADMIN_TOKEN, "ip_whitelist": ADMIN_IPS},
    "trusted_proxies": ["127.0.0.1"],
    "audit": {"sinks": [{"type": "sqlite"}]},
}

SECRET = "sup3r-secret-value"


def registration(mcp_id: str, **extra: Any) -> dict[str, Any]:
    """An MCP definition for POST /admin/mcps: the demo server with a secret in its env."""
    return {
        "id": mcp_id,
        "command": sys.executable,
        "args": ["-m", "mcp_barbican.demo"],
        "env": {"DEMO_API_KEY": SECRET},
        "auth": {"type": "token", "token": TOKEN},
        **extra,
    }


# (method, path, body) of one successful call of every admin route; {rule}, {token}, {mcp} are filled in.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/openapi.json", None),
    ("GET", "/admin/mcps", None),
    ("POST", "/admin/mcps", registration("guarded")),
    ("GET", "/admin/mcps/{mcp}", None),
    ("PUT", "/admin/mcps/{mcp}", registration("ignored-by-put", description="v2")),
    ("DELETE", "/admin/mcps/{mcp}", None),
    ("GET", "/admin/mcps/{mcp}/pins", None),
    ("POST", "/admin/mcps/{mcp}/pins/approve", None),
    ("POST", "/admin/mcps/{mcp}/pins/reset", None),
    ("DELETE", "/admin/mcps/{mcp}/pins", None),
    ("GET", "/admin/tools", None),
    ("POST", "/admin/tools/call", {"mcpName": "demo", "toolName": "echo", "arguments": {"message": "x"}}),
    ("GET", "/admin/authorization/explain?mcp=demo&tool=echo", None),
    ("GET", "/admin/security/ip-rules", None),
    ("POST", "/admin/security/ip-rules", {"cidr": "198.51.100.0/24", "action": "deny", "duration": "1h"}),
    ("DELETE", "/admin/security/ip-rules/{rule}", None),
    ("GET", "/admin/tokens", None),
    ("POST", "/admin/tokens", {"roles": ["reader"], "mcps": ["demo"], "expires_in": "1h"}),
    ("POST", "/admin/tokens/{token}/rotate", {"overlap": "10m"}),
    ("DELETE", "/admin/tokens/{token}", None),
    ("GET", "/admin/metrics", None),
    ("GET", "/admin/security/metrics", None),
    ("GET", "/metrics", None),
    ("GET", "/admin/audit", None),
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [demo_mcp("demo"), demo_mcp("other")]
    with run_proxy(tmp_path_factory.mktemp("admin"), mcps, server=SERVER) as running:
        yield running


def call(proxy: RunningProxy, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    return httpx2.request(method, f"{proxy.base}{path}", json=body, headers=ADMIN if headers is None else headers)


def fill(proxy: RunningProxy, path: str, body: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    if "{mcp}" in path:
        mcp_id = f"m{time.monotonic_ns()}"
        assert call(proxy, "POST", "/admin/mcps", registration(mcp_id)).status_code == 201
        path = path.replace("{mcp}", mcp_id)
        body = None if body is None else {**body, "id": mcp_id}
    if "{rule}" in path:
        rule = call(proxy, "POST", "/admin/security/ip-rules", {"cidr": "203.0.113.9", "duration": 60}).json()
        path = path.replace("{rule}", rule["rule"]["id"])
    if "{token}" in path:
        token = call(proxy, "POST", "/admin/tokens", {"expires_in": 3600}).json()
        path = path.replace("{token}", token["id"])
    return path, body


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_is_guarded_and_answers(
    proxy: RunningProxy, method: str, path: str, body: dict[str, Any] | None
) -> None:
    path, body = fill(proxy, path, body)
    refused = {
        "no token": {},
        "client token": AUTH_HEADER,
        "wrong token": {"Authorization": "Bearer not-the-admin-token"},
    }
    for why, headers in refused.items():
        response = call(proxy, method, path, body, headers)
        assert response.status_code == 401, why
        assert response.json()["error"], why
        assert response.headers["www-authenticate"].startswith("Bearer"), why
    outsider = call(proxy, method, path, body, {**ADMIN, "X-Forwarded-For": "192.0.2.1"})
    assert outsider.status_code == 403
    assert outsider.json()["error"] == "ip_blocked"
    allowed_elsewhere = call(proxy, "GET", "/admin/security/metrics", None, {**ADMIN, "X-Forwarded-For": "10.20.3.4"})
    assert allowed_elsewhere.status_code == 200
    response = call(proxy, method, path, body)
    assert response.status_code in (200, 201, 204), response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    if path == "/metrics":
        assert "mcp_barbican_security_violations_total" in response.text
    elif response.status_code != 204:
        assert isinstance(response.json(), dict)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        pytest.param("/admin/security/ip-rules", {"cidr": "300.1.1.1"}, "cidr", id="bad-cidr"),
        pytest.param("/admin/security/ip-rules", {"cidr": "10.0.0.1", "action": "ban"}, "action", id="bad-action"),
        pytest.param("/admin/security/ip-rules", {"cidr": "10.0.0.1", "duration": "-5s"}, "duration", id="neg"),
        pytest.param("/admin/security/ip-rules", {"cidr": "10.0.0.1", "extra": 1}, "extra", id="unknown-key"),
        pytest.param("/admin/security/ip-rules", [1, 2], "", id="not-an-object"),
        pytest.param("/admin/tokens", {"mcps": ["nope"]}, "nope", id="unknown-mcp"),
        pytest.param("/admin/tokens", {"id": "bad id"}, "id", id="bad-token-id"),
        pytest.param("/admin/tokens", {"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", id="past-expiry"),
        pytest.param("/admin/tokens", {"roles": [""]}, "roles", id="empty-role"),
        # Found by schemathesis: lifetimes past any date arithmetic used to answer 500.
        pytest.param("/admin/tokens", {"expires_in": 5e55}, "expires_in", id="huge-lifetime"),
        pytest.param("/admin/security/ip-rules", {"cidr": "10.0.0.1", "duration": 1e300}, "duration", id="huge-ban"),
        pytest.param("/admin/tokens/{token}/rotate", {"overlap": 5.5e55}, "overlap", id="huge-overlap"),
    ],
)
def test_invalid_bodies_get_400_naming_the_field(proxy: RunningProxy, path: str, body: Any, words: str) -> None:
    path, _ = fill(proxy, path, None)
    response = call(proxy, "POST", path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_request", "invalid_json")
    assert words in response.json()["message"]


def test_broken_json_unknown_routes_and_methods(proxy: RunningProxy) -> None:
    broken = httpx2.post(f"{proxy.base}/admin/tokens", content=b"{nope", headers=ADMIN)
    assert broken.status_code == 400
    assert broken.json()["error"] == "invalid_json"
    assert call(proxy, "GET", "/admin/nothing").status_code == 404
    wrong = call(proxy, "PATCH", "/admin/tokens")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert call(proxy, "DELETE", "/admin/tokens/unknown").status_code == 404
    assert call(proxy, "DELETE", "/admin/security/ip-rules/unknown").status_code == 404


def initialize(proxy: RunningProxy, token: str, mcp: str = "demo") -> int:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    return int(httpx2.post(proxy.url(mcp), headers=headers, json=INIT).status_code)


def test_token_lifecycle(proxy: RunningProxy) -> None:
    issued = call(proxy, "POST", "/admin/tokens", {"id": "ci-bot", "mcps": ["demo"], "roles": ["ci"]})
    assert issued.status_code == 201
    token = issued.json()["token"]
    assert initialize(proxy, token) == 200
    assert initialize(proxy, token, "other") == 403  # outside its MCP scope
    listed = call(proxy, "GET", "/admin/tokens").text
    assert token not in listed
    assert "ci-bot" in listed
    assert call(proxy, "POST", "/admin/tokens", {"id": "ci-bot"}).status_code == 409

    rotated = call(proxy, "POST", "/admin/tokens/ci-bot/rotate", {"overlap": 2}).json()
    successor = rotated["token"]
    assert rotated["previous"]["expires_at"] is not None
    assert initialize(proxy, token) == 200
    assert initialize(proxy, successor) == 200
    time.sleep(2.2)
    assert initialize(proxy, token) == 401
    assert initialize(proxy, successor) == 200

    assert call(proxy, "DELETE", f"/admin/tokens/{rotated['id']}").status_code == 204
    assert initialize(proxy, successor) == 401
    assert rotated["id"].startswith("ci-bot.")
    again = call(proxy, "POST", f"/admin/tokens/{rotated['id']}/rotate", {"overlap": 0})
    assert again.status_code == 409  # revoked above
    tokens = {t["id"]: t for t in call(proxy, "GET", "/admin/tokens").json()["tokens"]}
    assert tokens[rotated["id"]]["revoked_at"] is not None
    assert not tokens[rotated["id"]]["active"]
    metrics = call(proxy, "GET", "/admin/security/metrics").json()
    assert metrics["tokens_generated"] >= 2
    assert metrics["tokens_revoked"] >= 1


def test_a_ban_through_the_api_applies_at_once_and_expires(proxy: RunningProxy) -> None:
    headers = {**MCP_HEADERS, **AUTH_HEADER, "X-Forwarded-For": "10.77.0.5"}
    assert httpx2.post(proxy.url("demo"), headers=headers, json=INIT).status_code == 200
    added = call(proxy, "POST", "/admin/security/ip-rules", {"cidr": "10.77.0.0/24", "duration": 1.5, "reason": "t"})
    assert added.status_code == 201
    refused = httpx2.post(proxy.url("demo"), headers=headers, json=INIT)
    assert refused.status_code == 403
    assert refused.json()["error"] == "ip_blocked"
    rules = call(proxy, "GET", "/admin/security/ip-rules").json()["rules"]
    assert any(r["cidr"] == "10.77.0.0/24" and r["expires_at"] for r in rules)
    time.sleep(1.7)
    assert httpx2.post(proxy.url("demo"), headers=headers, json=INIT).status_code == 200


def test_openapi_describes_every_route(proxy: RunningProxy) -> None:
    document = call(proxy, "GET", "/admin/openapi.json").json()
    assert document["openapi"].startswith("3.")
    described = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    routes = {(method, re.sub(r"\{(rule|token|mcp)\}", "{id}", path.partition("?")[0])) for method, path, _ in ROUTES}
    assert described == routes


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=SERVER) as first:
        token = call(first, "POST", "/admin/tokens", {"id": "kept"}).json()["token"]
        call(first, "POST", "/admin/security/ip-rules", {"cidr": "10.99.0.0/16", "reason": "kept"})
    with run_proxy(tmp_path, [demo_mcp("demo")], server=SERVER) as second:
        assert initialize(second, token) == 200
        assert initialize(second, TOKEN) == 200
        rules = call(second, "GET", "/admin/security/ip-rules").json()["rules"]
        assert [r["cidr"] for r in rules] == ["10.99.0.0/16"]
        banned = {**MCP_HEADERS, **AUTH_HEADER, "X-Forwarded-For": "10.99.1.1"}
        assert httpx2.post(second.url("demo"), headers=banned, json=INIT).status_code == 403
    assert (tmp_path / ".mcp-barbican" / "state.db").exists()


def test_the_admin_api_can_have_its_own_listener(tmp_path: Path) -> None:
    from tests.proxy import free_port

    admin_port = free_port()
    server: dict[str, Any] = {**SERVER, "admin": {"token": ADMIN_TOKEN, "port": admin_port}}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as proxy:
        admin_base = f"http://127.0.0.1:{admin_port}"
        assert httpx2.get(f"{admin_base}/admin/security/metrics", headers=ADMIN).status_code == 200
        assert httpx2.get(f"{admin_base}/admin/security/metrics").status_code == 401
        assert call(proxy, "GET", "/admin/security/metrics").status_code == 404
        mcp_on_admin = httpx2.post(f"{admin_base}/mcp/demo", headers={**MCP_HEADERS, **AUTH_HEADER}, json=INIT)
        assert mcp_on_admin.status_code == 404
        assert initialize(proxy, TOKEN) == 200


def test_an_automatic_ban_survives_a_restart(tmp_path: Path) -> None:
    ban = {"auth_failure_ban": {"max_failures": 2, "find_time": "1m", "ban_time": "10m"}}
    server: dict[str, Any] = {**SERVER, "security": ban}
    banned = {**MCP_HEADERS, **AUTH_HEADER, "X-Forwarded-For": "10.44.0.1"}
    wrong = {**banned, "Authorization": "Bearer wrong"}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as first:
        statuses = [httpx2.post(first.url("demo"), headers=wrong, json=INIT).status_code for _ in range(3)]
        assert statuses == [401, 401, 403]
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as second:
        assert httpx2.post(second.url("demo"), headers=banned, json=INIT).status_code == 403
        rules = call(second, "GET", "/admin/security/ip-rules").json()["rules"]
        assert [r["cidr"] for r in rules] == ["10.44.0.1"]
