"""TLS end to end: the proxy's own listener (TLS versions, mTLS) and its connection to an upstream."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import trustme

from tests.proxy import AUTH_HEADER, demo_mcp, run_proxy
from tests.server.test_auth_e2e import RecordingUpstream
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.test")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


def client_context(
    files: dict[str, Path], *, with_cert: bool, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    if with_cert:
        context.load_cert_chain(str(files["client"]))
    if max_version is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = max_version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.fixture(scope="module")
def tls_proxy(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tls = {
        "cert_file": str(files["cert"]),
        "key_file": str(files["key"]),
        "ca_file": str(files["ca"]),
        "client_auth": "required",
        "min_version": "1.2",
    }
    with run_proxy(tmp_path_factory.mktemp("tls"), [demo_mcp("demo")], server={"tls": tls}, wait_ready=False) as proxy:
        yield f"https://127.0.0.1:{proxy.port}"


def test_a_client_with_a_certificate_from_ca_file_gets_through(tls_proxy: str, files: dict[str, Path]) -> None:
    with httpx2.Client(verify=client_context(files, with_cert=True)) as client:
        response = client.post(f"{tls_proxy}/mcp/demo", headers=MCP_HEADERS, json=INIT)
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_a_client_without_a_certificate_is_refused(tls_proxy: str, files: dict[str, Path]) -> None:
    with httpx2.Client(verify=client_context(files, with_cert=False)) as client, pytest.raises(httpx2.TransportError):
        client.post(f"{tls_proxy}/mcp/demo", headers=MCP_HEADERS, json=INIT)


# The client offers TLS 1.0 and 1.1 on purpose, to see the proxy refuse them; Python deprecates the names.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1(_1)? is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_when_the_minimum_is_1_2(tls_proxy: str, files: dict[str, Path]) -> None:
    context = client_context(files, with_cert=True, max_version=ssl.TLSVersion.TLSv1_1)
    with httpx2.Client(verify=context) as client, pytest.raises(httpx2.TransportError):
        client.get(f"{tls_proxy}/healthz")


@pytest.mark.parametrize(
    ("tls", "ready"),
    [
        pytest.param("trusted", True, id="ca-file"),
        pytest.param("untrusted", False, id="untrusted-refused"),
        pytest.param("skip", True, id="insecure-skip-verify"),
    ],
)
def test_the_upstream_certificate_is_checked_end_to_end(
    ca: trustme.CA, files: dict[str, Path], tmp_path: Path, tls: str, ready: bool
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    upstream = RecordingUpstream(server_context)
    upstream_tls = {"trusted": {"ca_file": str(files["ca"])}, "untrusted": {}, "skip": {"insecure_skip_verify": True}}
    mcp = {
        "id": "remote",
        "url": upstream.url,
        "transport": "streamable-http",
        "tls": upstream_tls[tls],
        "start_timeout": "3s",
    }
    with upstream.serve(), run_proxy(tmp_path, [mcp], wait_ready=False) as proxy:
        response = httpx2.post(proxy.url("remote"), headers={**MCP_HEADERS, **AUTH_HEADER}, json=INIT, timeout=20)
        assert (response.status_code == 200) is ready, response.text
        if not ready:
            assert response.status_code == 502
            assert "certificate" in response.json()["error"]["message"].lower()
