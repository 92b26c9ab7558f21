"""Automatic bans through a running proxy: every route counts, one ban list, and no lock-out.

Distinct client addresses come from X-Forwarded-For, believed because the tests declare
127.0.0.1 a trusted proxy. The trusted proxy itself and the default `ignore` list (loopback)
never count, so the lock-out tests send from 127.0.0.1 directly.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRONG = {"Authorization": "Bearer wrong-token-0123456789"}
BAN_TIME = 600
SERVER: dict[str, Any] = {
    "admin": {"token": ADMIN_TOKEN, "ip_whitelist": ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]},
    "trusted_proxies": ["127.0.0.1"],
    "security": {"auth_failure_ban": {"ban_time": BAN_TIME}},
}
LIST = "/api/v1/mcp/list"


def via(ip: str, headers: dict[str, str]) -> dict[str, str]:
    return {**MCP_HEADERS, **headers, "X-Forwarded-For": ip}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    mcps = [demo_mcp("demo"), {**demo_mcp("open"), "auth": {"type": "none"}}]
    with run_proxy(tmp_path_factory.mktemp("bans"), mcps, server=SERVER) as running:
        yield running


def mcp_call(proxy: RunningProxy, ip: str, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(proxy.url("demo"), headers=via(ip, headers), json=INIT)


def list_call(proxy: RunningProxy, ip: str, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.get(proxy.base + LIST, headers=via(ip, headers))


def admin_call(proxy: RunningProxy, ip: str, headers: dict[str, str], method: str = "GET", path: str = "") -> Any:
    return httpx2.request(method, proxy.base + (path or "/admin/security/ip-rules"), headers=via(ip, headers))


def assert_banned(response: httpx2.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "banned"
    assert BAN_TIME - 60 <= int(response.headers["retry-after"]) <= BAN_TIME
    assert response.json()["retry_after"] == int(response.headers["retry-after"])


def assert_banned_everywhere(proxy: RunningProxy, ip: str) -> None:
    """The ban holds on every route but health, whatever credential the client brings (bar the admin's)."""
    assert_banned(mcp_call(proxy, ip, AUTH_HEADER))
    assert_banned(list_call(proxy, ip, AUTH_HEADER))
    assert_banned(httpx2.get(proxy.base + "/.well-known/oauth-protected-resource/mcp/demo", headers=via(ip, {})))
    assert_banned(admin_call(proxy, ip, WRONG))
    assert httpx2.get(proxy.base + "/healthz", headers=via(ip, {})).status_code == 200


@pytest.mark.parametrize(
    ("route", "send", "refused"),
    [
        pytest.param("mcp", mcp_call, 401, id="mcp"),
        pytest.param("list", list_call, 200, id="mcp-list"),  # 200: the auth-less MCP is listed to anyone
        pytest.param("admin", admin_call, 401, id="admin"),
    ],
)
def test_five_wrong_tokens_on_any_route_ban_the_address(
    proxy: RunningProxy, route: str, send: Any, refused: int
) -> None:
    ip = {"mcp": "10.1.0.1", "list": "10.1.0.2", "admin": "10.1.0.3"}[route]
    assert [send(proxy, ip, WRONG).status_code for _ in range(5)] == [refused] * 5
    assert_banned_everywhere(proxy, ip)
    assert mcp_call(proxy, "10.1.1.1", AUTH_HEADER).status_code == 200, "another address is untouched"


def test_failures_on_different_routes_add_up_to_one_ban(proxy: RunningProxy) -> None:
    ip = "10.2.0.1"
    assert [list_call(proxy, ip, WRONG).status_code for _ in range(2)] == [200, 200]
    assert [admin_call(proxy, ip, WRONG).status_code for _ in range(2)] == [401, 401]
    assert mcp_call(proxy, ip, WRONG).status_code == 401
    assert_banned(mcp_call(proxy, ip, AUTH_HEADER))


def test_the_list_without_a_credential_is_no_failure(proxy: RunningProxy) -> None:
    ip = "10.3.0.1"
    no_credential = {"Accept": "application/json"}
    for _ in range(8):
        response = httpx2.get(proxy.base + LIST, headers={**no_credential, "X-Forwarded-For": ip})
        assert response.status_code == 200
        assert [mcp["id"] for mcp in response.json()["mcps"]] == ["open"]


def test_a_valid_admin_token_passes_a_ban_and_lifts_it(proxy: RunningProxy) -> None:
    ip = "10.4.0.1"
    for _ in range(5):
        mcp_call(proxy, ip, WRONG)
    assert_banned(mcp_call(proxy, ip, AUTH_HEADER))
    assert_banned(admin_call(proxy, ip, AUTH_HEADER))  # a client token is no admin credential
    listed = admin_call(proxy, ip, ADMIN)
    assert listed.status_code == 200, listed.text
    ban = next(rule for rule in listed.json()["rules"] if rule["cidr"] == ip)
    assert ban["id"] == f"ban:{ip}" and ban["expires_at"]
    lifted = admin_call(proxy, ip, ADMIN, "DELETE", f"/admin/security/ip-rules/{ban['id']}")
    assert lifted.status_code == 204
    assert mcp_call(proxy, ip, AUTH_HEADER).status_code == 200


def test_an_operators_deny_rule_stops_even_a_valid_admin_token(proxy: RunningProxy) -> None:
    added = httpx2.post(
        proxy.base + "/admin/security/ip-rules", headers=ADMIN, json={"cidr": "10.5.0.0/16", "duration": 60}
    )
    assert added.status_code == 201
    try:
        refused = admin_call(proxy, "10.5.0.1", ADMIN)
        assert (refused.status_code, refused.json()["error"]) == (403, "ip_blocked")
        assert "retry-after" not in refused.headers
    finally:
        httpx2.delete(proxy.base + f"/admin/security/ip-rules/{added.json()['rule']['id']}", headers=ADMIN)


def test_an_admin_token_from_off_the_admin_list_is_refused_even_when_banned(proxy: RunningProxy) -> None:
    ip = "192.0.2.44"  # off the admin list
    for _ in range(5):
        mcp_call(proxy, ip, WRONG)
    assert_banned(mcp_call(proxy, ip, AUTH_HEADER))
    refused = admin_call(proxy, ip, ADMIN)
    assert (refused.status_code, refused.json()["error"]) == (403, "ip_blocked")


def test_ipv6_failures_add_up_per_slash_64_and_ban_it(proxy: RunningProxy) -> None:
    for host in range(1, 6):
        assert mcp_call(proxy, f"2001:db8:6:1::{host}", WRONG).status_code == 401
    assert_banned_everywhere(proxy, "2001:db8:6:1:ffff::99")
    assert mcp_call(proxy, "2001:db8:6:2::1", AUTH_HEADER).status_code == 200, "another /64 is untouched"
    rules = httpx2.get(proxy.base + "/admin/security/ip-rules", headers=ADMIN).json()["rules"]
    assert [rule["id"] for rule in rules if rule["cidr"] == "2001:db8:6:1::/64"] == ["ban:2001:db8:6:1::_64"]
    lifted = httpx2.delete(proxy.base + "/admin/security/ip-rules/ban:2001:db8:6:1::_64", headers=ADMIN)
    assert lifted.status_code == 204
    assert mcp_call(proxy, "2001:db8:6:1::7", AUTH_HEADER).status_code == 200


def test_mistyped_tokens_from_loopback_never_lock_it_out(tmp_path: Path) -> None:
    server = {"admin": {"token": ADMIN_TOKEN}, "security": {}}  # the defaults: bans on, loopback ignored
    headers = {**MCP_HEADERS, **WRONG}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as proxy:
        for _ in range(3):
            assert httpx2.post(proxy.url("demo"), headers=headers, json=INIT).status_code == 401
            assert httpx2.get(proxy.base + LIST, headers=headers).status_code == 401
            assert httpx2.get(proxy.base + "/admin/mcps", headers=WRONG).status_code == 401
        assert httpx2.post(proxy.url("demo"), headers=MCP_HEADERS, json=INIT).status_code == 200
        assert httpx2.get(proxy.base + "/admin/mcps", headers=ADMIN).status_code == 200
        assert httpx2.get(proxy.base + "/admin/security/ip-rules", headers=ADMIN).json()["count"] == 0


def test_a_ban_survives_a_restart_and_the_log_names_it(tmp_path: Path) -> None:
    server = {**SERVER, "security": {"auth_failure_ban": {"ban_time": BAN_TIME, "ignore": []}}}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as proxy:
        assert [list_call(proxy, "10.7.0.1", WRONG).status_code for _ in range(5)] == [401] * 5
        assert_banned(list_call(proxy, "10.7.0.1", AUTH_HEADER))
        assert "ban in force" not in proxy.log_text()
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as proxy:
        assert_banned(mcp_call(proxy, "10.7.0.1", AUTH_HEADER))
        log = proxy.log_text()
    assert "1 automatic ban(s) in force; lift one with DELETE /admin/security/ip-rules/{id}" in log
    line = next(line for line in log.splitlines() if "ban in force: 10.7.0.1 until " in line)
    assert "id ban:10.7.0.1" in line
    expires = calendar.timegm(time.strptime(line.split(" until ")[1].split(" ")[0], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - time.time() - BAN_TIME) < 60


def test_wrong_admin_tokens_on_readyz_count_toward_the_ban(tmp_path: Path) -> None:
    """/readyz takes the admin token while something is not ready: guessing there bans like /admin does."""
    broken = {"id": "broken", "command": "/nonexistent/mcp-server", "start_timeout": "2s"}
    with run_proxy(tmp_path, [broken, demo_mcp("demo")], server=SERVER, wait_ready=False) as proxy:
        deadline = time.monotonic() + 20
        while httpx2.get(proxy.base + "/readyz", headers=ADMIN).json().get("not_ready") is None:
            assert time.monotonic() < deadline, "the broken MCP never showed as not ready"
            time.sleep(0.2)
        ip = "10.77.0.1"
        for _ in range(5):
            answer = httpx2.get(proxy.base + "/readyz", headers=via(ip, WRONG))
            assert answer.status_code == 401 and "broken" not in answer.text
        assert_banned(mcp_call(proxy, ip, AUTH_HEADER))
        assert_banned(httpx2.get(proxy.base + "/readyz", headers=via(ip, WRONG)))
