"""mTLS identity end to end: the verified client certificate is the principal `mtls:{identity}`."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import trustme

from tests.proxy import demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
BURST = 3


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "alice", "bob", "stranger")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    leaves = {
        "alice": ca.issue_cert("alice.example", common_name="alice"),
        "bob": ca.issue_cert("bob.example", common_name="bob"),
        "stranger": stranger_ca.issue_cert("alice.example", common_name="alice"),
    }
    for name, leaf in leaves.items():
        leaf.private_key_and_cert_chain_pem.write_to_path(str(paths[name]))
    return paths


def client(pki: dict[str, Path], who: str | None) -> httpx2.Client:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if who is not None:
        context.load_cert_chain(str(pki[who]))
    return httpx2.Client(verify=context, timeout=30)


def tls(pki: dict[str, Path], client_auth: str) -> dict[str, Any]:
    files = {name: str(pki[name]) for name in ("cert", "key")}
    return {"cert_file": files["cert"], "key_file": files["key"], "ca_file": str(pki["ca"]), "client_auth": client_auth}


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def proxy(pki: dict[str, Path], audit_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    limited = {
        "auth_failure_ban": {"enabled": False},
        "rate_limit": {"per_token_requests_per_minute": BURST, "per_token_burst_size": BURST},
    }
    server = {
        "tls": tls(pki, "optional"),
        "auth": {"type": "mtls", "mtls": {"identity": "subject_cn"}},
        # Every authentication failure counts toward a ban: the last test of this module trips it.
        "security": {"auth_failure_ban": {"enabled": True, "max_failures": 3, "ignore": []}},
        "audit": {"sinks": [{"type": "file", "path": str(audit_file)}]},
    }
    mcps = [demo_mcp("demo"), {**demo_mcp("limited"), "security": limited}]
    with run_proxy(tmp_path_factory.mktemp("mtls"), mcps, server=server, wait_ready=False) as running:
        yield f"https://127.0.0.1:{running.port}"


def post(http: httpx2.Client, url: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return http.post(url, headers={**MCP_HEADERS, **headers}, json=body)


def test_a_session_belongs_to_the_certificate_identity_that_opened_it(
    proxy: str, pki: dict[str, Path], audit_file: Path
) -> None:
    with client(pki, "alice") as alice, client(pki, "bob") as bob:
        opened = post(alice, f"{proxy}/mcp/demo", INIT)
        assert opened.status_code == 200, opened.text
        session = opened.headers["mcp-session-id"]
        assert post(alice, f"{proxy}/mcp/demo", PING, **{"Mcp-Session-Id": session}).status_code == 200
        assert post(bob, f"{proxy}/mcp/demo", PING, **{"Mcp-Session-Id": session}).status_code == 404
        assert post(bob, f"{proxy}/mcp/demo", INIT).status_code == 200
    users = {orjson.loads(line).get("user") for line in audit_file.read_bytes().splitlines()}
    assert {"mtls:alice", "mtls:bob"} <= users


def test_no_certificate_is_a_401_with_a_challenge(proxy: str, pki: dict[str, Path]) -> None:
    with client(pki, None) as anonymous:
        response = post(anonymous, f"{proxy}/mcp/limited", INIT)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert "missing credentials" in response.text
    assert response.headers["www-authenticate"].startswith("Bearer ")


def test_a_certificate_from_another_ca_fails_the_handshake_even_when_optional(proxy: str, pki: dict[str, Path]) -> None:
    # OpenSSL verifies a certificate the client chose to send also under CERT_OPTIONAL: no request is made.
    with client(pki, "stranger") as stranger, pytest.raises(httpx2.TransportError):
        post(stranger, f"{proxy}/mcp/demo", INIT)


def test_rate_limits_key_on_the_certificate_identity(proxy: str, pki: dict[str, Path]) -> None:
    with client(pki, "alice") as alice, client(pki, "bob") as bob:
        codes = [post(alice, f"{proxy}/mcp/limited", INIT).status_code for _ in range(BURST + 1)]
        assert codes == [200] * BURST + [429]
        assert post(bob, f"{proxy}/mcp/limited", INIT).status_code == 200


def test_missing_certificates_feed_the_ban_tracker(proxy: str, pki: dict[str, Path]) -> None:
    with client(pki, None) as anonymous, client(pki, "alice") as alice:
        assert [post(anonymous, f"{proxy}/mcp/demo", INIT).status_code for _ in range(3)] == [401] * 3
        banned = post(alice, f"{proxy}/mcp/demo", INIT)
    assert banned.status_code == 403
    assert banned.json()["error"] == "banned"


@pytest.mark.parametrize("identity", ["san_dns"])
def test_required_client_auth_refuses_strangers_and_names_the_san(
    pki: dict[str, Path], tmp_path: Path, identity: str
) -> None:
    server = {"tls": tls(pki, "required"), "auth": {"type": "mtls", "mtls": {"identity": identity}}}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server, wait_ready=False) as running:
        url = f"https://127.0.0.1:{running.port}/mcp/demo"
        with client(pki, "stranger") as stranger, pytest.raises(httpx2.TransportError):
            post(stranger, url, INIT)
        with client(pki, None) as anonymous, pytest.raises(httpx2.TransportError):
            post(anonymous, url, INIT)
        with client(pki, "alice") as alice, client(pki, "bob") as bob:
            session = post(alice, url, INIT).headers["mcp-session-id"]
            assert post(alice, url, PING, **{"Mcp-Session-Id": session}).status_code == 200
            assert post(bob, url, PING, **{"Mcp-Session-Id": session}).status_code == 404
