"""The security layers through a running proxy: IP rules, bans, rate limits, CORS, JWT.

Distinct client addresses come from X-Forwarded-For, believed only because the test
declares 127.0.0.1 a trusted proxy (as a load balancer in front of mcp-barbican would be).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

HS_SECRET = "s" * 48
TRUSTED = {"trusted_proxies": ["127.0.0.1"]}


def from_ip(ip: str, **headers: str) -> dict[str, str]:
    return {**MCP_HEADERS, "X-Forwarded-For": ip, **headers}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    jwt_auth = {
        "type": "jwt",
        "jwt": {"secret": HS_SECRET, "algorithms": ["HS256"], "issuer": "https://issuer.test", "audience": "barbican"},
    }
    mcps = [
        demo_mcp("demo"),
        demo_mcp("listed", security={"ip_whitelist": ["10.1.0.0/16", "2001:db8::/32"], "ip_blacklist": ["10.1.0.66"]}),
        # One token per 10 s: the five requests below (each starts a child) never span a refill, even on a busy machine.
        demo_mcp("limited", security={"rate_limit": {"per_ip_requests_per_minute": 6, "per_ip_burst_size": 3}}),
        demo_mcp(
            "browser",
            security={"cors": {"allowed_origins": ["https://app.example.com", "*.example.org"]}},
        ),
        {**demo_mcp("jwt"), "auth": jwt_auth},
        {
            **demo_mcp("banning"),
            "security": {"auth_failure_ban": {"max_failures": 5, "find_time": "1m", "ban_time": "2s"}},
        },
    ]
    with run_proxy(tmp_path_factory.mktemp("security"), mcps, server=TRUSTED) as running:
        yield running


@pytest.mark.parametrize(
    ("ip", "status"),
    [
        pytest.param("10.1.2.3", 200, id="whitelisted-v4"),
        pytest.param("::ffff:10.1.2.3", 200, id="mapped-v6-matches-v4"),
        pytest.param("2001:db8::7", 200, id="whitelisted-v6"),
        pytest.param("10.1.0.66", 403, id="blacklist-wins"),
        pytest.param("10.2.0.1", 403, id="not-whitelisted"),
        pytest.param("198.51.100.1, 10.1.2.3", 200, id="rightmost-untrusted-hop"),
        pytest.param("10.1.2.3, 198.51.100.1", 403, id="spoofed-leftmost-ignored"),
    ],
)
def test_ip_lists_decide_on_the_resolved_client_address(proxy: RunningProxy, ip: str, status: int) -> None:
    response = httpx2.post(proxy.url("listed"), headers=from_ip(ip), json=INIT)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"] == "ip_blocked"
        assert response.headers["x-content-type-options"] == "nosniff"


def test_six_bad_tokens_ban_that_address_only_until_the_ban_time_passes(proxy: RunningProxy) -> None:
    bad = {"Authorization": "Bearer wrong-token"}
    statuses = [
        httpx2.post(proxy.url("banning"), headers=from_ip("10.9.9.9", **bad), json=INIT).status_code for _ in range(6)
    ]
    assert statuses == [401] * 5 + [403]
    good = from_ip("10.9.9.9", **AUTH_HEADER)
    assert httpx2.post(proxy.url("banning"), headers=good, json=INIT).status_code == 403
    assert httpx2.post(proxy.url("demo"), headers=good, json=INIT).status_code == 403  # banned everywhere
    other = from_ip("10.9.9.10", **AUTH_HEADER)
    assert httpx2.post(proxy.url("banning"), headers=other, json=INIT).status_code == 200
    time.sleep(2.5)  # the configured ban time is 2 s
    assert httpx2.post(proxy.url("banning"), headers=good, json=INIT).status_code == 200


def test_a_burst_over_the_limit_gets_429_with_headers_and_a_jsonrpc_body(proxy: RunningProxy) -> None:
    responses = [httpx2.post(proxy.url("limited"), headers=from_ip("10.5.5.5"), json=INIT) for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    refused = responses[3]
    assert int(refused.headers["retry-after"]) >= 1
    assert "ip-minute" in refused.headers["ratelimit-policy"]
    assert refused.headers["ratelimit"]
    assert refused.headers["x-frame-options"] == "DENY"
    body = refused.json()
    assert body["id"] == INIT["id"] and body["error"]["code"] == -32029
    other = httpx2.post(proxy.url("limited"), headers=from_ip("10.5.5.6"), json=INIT)
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://a.b.example.org", True),
        ("https://evil-example.org", False),
        ("https://example.org.evil.net", False),
        ("http://app.example.com", False),
    ],
)
def test_cors_preflights_are_answered_before_auth_and_allowed_origins_pass(
    proxy: RunningProxy, origin: str, allowed: bool
) -> None:
    preflight = httpx2.options(
        proxy.url("browser"),
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization, mcp-session-id",
        },
    )
    if not allowed:
        assert preflight.status_code == 403
        response = httpx2.post(proxy.url("browser"), headers={**MCP_HEADERS, "Origin": origin}, json=INIT)
        assert response.status_code == 403
        return
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "Origin" in preflight.headers["vary"]
    response = httpx2.post(proxy.url("browser"), headers={**MCP_HEADERS, "Origin": origin}, json=INIT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "mcp-session-id" in response.headers["access-control-expose-headers"].lower()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """A token with `alg: none` and no signature, built by hand (PyJWT rightly refuses to)."""
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}."


def token(**overrides: Any) -> str:
    now = int(time.time())
    # A day: the parameters are made when the module is collected, which may be long before they run.
    claims = {"iss": "https://issuer.test", "aud": "barbican", "sub": "alice", "exp": now + 86_400, "iat": now}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, HS_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("credential", "status", "word"),
    [
        pytest.param(token(), 200, None, id="valid"),
        pytest.param(token() + "x", 401, "signature", id="bad-signature"),
        pytest.param(jwt.encode({"sub": "a", "exp": 1}, "x" * 48, algorithm="HS256"), 401, "signature", id="other-key"),
        pytest.param(token(exp=int(time.time()) - 3600), 401, "expired", id="expired"),
        pytest.param(token(iss="https://evil.test"), 401, "claims", id="wrong-issuer"),
        pytest.param(token(aud="someone-else"), 401, "claims", id="wrong-audience"),
        pytest.param(token(exp=None), 401, "claims", id="missing-exp"),
        pytest.param(unsigned({"sub": "a", "exp": 2**40}), 401, "none", id="alg-none"),
    ],
)
def test_jwt_refusals_say_why(proxy: RunningProxy, credential: str, status: int, word: str | None) -> None:
    response = httpx2.post(
        proxy.url("jwt"), headers={**MCP_HEADERS, "Authorization": f"Bearer {credential}"}, json=INIT
    )
    assert response.status_code == status, response.text
    if word is not None:
        assert word in response.json()["message"]
        assert response.headers["www-authenticate"].startswith('Bearer realm="jwt"')


def test_an_hs256_token_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(public_pem)
    auth = {"type": "jwt", "jwt": {"public_key_file": str(tmp_path / "public.pem"), "algorithms": ["RS256"]}}
    claims = {"sub": "mallory", "exp": int(time.time()) + 300}
    good = jwt.encode(claims, key, algorithm="RS256")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + b64(signature)
    with run_proxy(tmp_path, [{**demo_mcp("rs"), "auth": auth}]) as proxy:
        ok = httpx2.post(proxy.url("rs"), headers={**MCP_HEADERS, "Authorization": f"Bearer {good}"}, json=INIT)
        forged_response = httpx2.post(
            proxy.url("rs"), headers={**MCP_HEADERS, "Authorization": f"Bearer {forged}"}, json=INIT
        )
    assert ok.status_code == 200
    assert forged_response.status_code == 401


def raw_request(port: int, head: str) -> bytes:
    """Send one hand-written request head and return the whole answer (the proxy closes or answers once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n")
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", ["/healthz", "/mcp/demo", "/api/v1/mcp/list"])
def test_two_host_headers_are_refused_on_every_route(proxy: RunningProxy, path: str) -> None:
    answer = raw_request(proxy.port, f"GET {path} HTTP/1.1\nHost: 127.0.0.1:{proxy.port}\nHost: evil.example.com\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"error":"ambiguous_request"' in answer


def test_two_host_headers_cannot_smuggle_a_foreign_host_first(proxy: RunningProxy) -> None:
    answer = raw_request(proxy.port, f"GET /healthz HTTP/1.1\nHost: evil.example.com\nHost: 127.0.0.1:{proxy.port}\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_a_page_on_another_local_port_is_refused_and_our_own_port_passes(proxy: RunningProxy) -> None:
    other = proxy.port + 1 if proxy.port < 65535 else proxy.port - 1
    for origin in (f"http://localhost:{other}", f"http://127.0.0.1:{other}", "http://localhost"):
        response = httpx2.post(proxy.url("demo"), headers={**MCP_HEADERS, "Origin": origin}, json=INIT)
        assert response.status_code == 403, origin
        assert response.json()["error"] == "forbidden_origin"
    own = httpx2.post(proxy.url("demo"), headers={**MCP_HEADERS, "Origin": f"http://127.0.0.1:{proxy.port}"}, json=INIT)
    assert own.status_code == 200


@pytest.mark.parametrize(("ip", "listed"), [("10.1.2.3", True), ("10.1.0.66", False), ("10.9.9.9", False)])
def test_the_mcp_list_hides_mcps_whose_ip_rules_refuse_the_caller(proxy: RunningProxy, ip: str, listed: bool) -> None:
    response = httpx2.get(proxy.base + "/api/v1/mcp/list", headers={**AUTH_HEADER, "X-Forwarded-For": ip})
    assert response.status_code == 200
    ids = {entry["id"] for entry in response.json()["mcps"]}
    assert ("listed" in ids) is listed
    assert "demo" in ids
    refused = httpx2.post(proxy.url("listed"), headers=from_ip(ip), json=INIT)
    assert (refused.status_code != 403) is listed  # the list agrees with the route itself
