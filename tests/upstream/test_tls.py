"""Upstream TLS: `client_ssl_context` unit checks, and the HTTP channels against a loopback
HTTPS server holding trustme certificates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import ConfigError, UpstreamError, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.upstream.http import make_http_session
from mcp_barbican.upstream.sse import SseChannel
from mcp_barbican.upstream.streamable import StreamableHttpChannel
from mcp_barbican.upstream.tls import TLS12_CIPHERS, client_ssl_context, openssl_cipher_string
from tests.upstream.upstream_support import TLS, Recorder, request

CLIENT_NAME = "client.barbican.test"


@dataclass(frozen=True)
class PKI:
    server_ca: trustme.CA
    server_cert: trustme.LeafCert
    client_ca: trustme.CA
    ca_file: str
    cert_file: str
    key_file: str
    combined_file: str
    encrypted_key_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    base: Path = tmp_path_factory.mktemp("pki")
    server_ca = trustme.CA()
    server_cert = server_ca.issue_cert("127.0.0.1", "localhost")
    client_ca = trustme.CA()
    client_cert = client_ca.issue_cert(CLIENT_NAME)
    server_ca.cert_pem.write_to_path(str(base / "ca.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(base / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(base / "client.key"))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(base / "client-combined.pem"))
    key = serialization.load_pem_private_key(client_cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (base / "client-encrypted.key").write_bytes(encrypted)
    return PKI(
        server_ca,
        server_cert,
        client_ca,
        ca_file=str(base / "ca.pem"),
        cert_file=str(base / "client.pem"),
        key_file=str(base / "client.key"),
        combined_file=str(base / "client-combined.pem"),
        encrypted_key_file=str(base / "client-encrypted.key"),
    )


# -- client_ssl_context -------------------------------------------------------------------------


def test_no_options_or_disabled_means_default_context() -> None:
    assert client_ssl_context(None) is None
    assert client_ssl_context(TLS(enabled=False, ca_file="/nonexistent")) is None


def test_context_settings(pki: PKI) -> None:
    ctx = client_ssl_context(TLS(ca_file=pki.ca_file, min_version="1.3", max_version="1.3"))
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)
    # only ca_file is trusted, not the system store
    assert len(ctx.get_ca_certs()) == 1
    assert client_ssl_context(TLS(ca_file=pki.ca_file)) is not ctx  # nothing cached


def test_cipher_mapping() -> None:
    assert openssl_cipher_string(()) is None
    assert openssl_cipher_string(("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")) is None
    assert (
        openssl_cipher_string(
            ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "ECDHE-RSA-CHACHA20-POLY1305")
        )
        == "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305"
    )
    with pytest.raises(ConfigError, match="TLS_RSA_WITH_RC4_128_MD5"):
        openssl_cipher_string(("TLS_RSA_WITH_RC4_128_MD5",))
    with pytest.raises(ConfigError, match="HIGH"):
        openssl_cipher_string(("HIGH",))  # no cipher-string language, only suite names


@pytest.mark.parametrize(("iana", "openssl_name"), sorted(TLS12_CIPHERS.items()))
def test_every_mapped_suite_is_known_to_openssl(iana: str, openssl_name: str) -> None:
    ctx = client_ssl_context(TLS(cipher_suites=(iana,)))
    assert ctx is not None
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == [openssl_name]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (TLS(min_version="1.1"), "tls.min_version"),
        (TLS(max_version="2"), "tls.max_version"),
        (TLS(min_version="1.3", max_version="1.2"), "tls.min_version"),
        (TLS(ca_file="/nonexistent/ca.pem"), "tls.ca_file"),
        (TLS(key_file="/some/key.pem"), "tls.key_file"),
        (TLS(cert_file="/nonexistent/cert.pem"), "tls.cert_file"),
        (TLS(cipher_suites=("TLS_NULL_WITH_NULL_NULL",)), "tls.cipher_suites"),
    ],
)
def test_invalid_options(options: TLS, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        client_ssl_context(options)
    assert info.value.path == key


def test_encrypted_key_is_refused_without_prompting(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="encrypted private keys"):
        client_ssl_context(TLS(cert_file=pki.cert_file, key_file=pki.encrypted_key_file))


def test_insecure_context_warns_every_time(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_barbican.upstream.tls"):
        for _ in range(2):
            ctx = client_ssl_context(TLS(insecure_skip_verify=True))
            assert ctx is not None
            assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    warnings = [r for r in caplog.records if "verification is DISABLED" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)


# -- against an HTTPS server --------------------------------------------------------------------


def server_context(
    pki: PKI, *, require_client_cert: bool = False, max_version: ssl.TLSVersion | None = None, ciphers: str = ""
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server_cert.configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        pki.client_ca.configure_trust(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def tls_facts(req: web.Request) -> dict[str, Any]:
    """What the TLS layer of this request saw."""
    transport = req.transport
    assert transport is not None
    ssl_object: ssl.SSLObject = transport.get_extra_info("ssl_object")
    peer = ssl_object.getpeercert()
    names: Any = (peer or {}).get("subjectAltName", ())
    cipher = ssl_object.cipher()
    return {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "peer": [value for kind, value in names if kind == "DNS"],
    }


async def describe_tls(req: web.Request) -> web.StreamResponse:
    """Streamable HTTP: answer any request with the TLS facts, as JSON."""
    body = await req.json()
    return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": tls_facts(req)})


STREAMS: web.AppKey[list[web.StreamResponse]] = web.AppKey("streams", list[web.StreamResponse])


async def sse_stream(req: web.Request) -> web.StreamResponse:
    """Legacy SSE: the endpoint event, then answers to what is POSTed to /messages."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(req)
    await resp.write(b"event: endpoint\ndata: /messages?s=1\n\n")
    req.app[STREAMS].append(resp)
    await asyncio.sleep(30)  # cancelled when the client goes away
    return resp


async def sse_post(req: web.Request) -> web.StreamResponse:
    body = await req.json()
    answer = {"jsonrpc": "2.0", "id": body["id"], "result": tls_facts(req)}
    await req.app[STREAMS][-1].write(b"event: message\ndata: " + jsonrpc.dumps(answer) + b"\n\n")
    return web.Response(status=202)


@contextlib.asynccontextmanager
async def https_server(ctx: ssl.SSLContext) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/mcp", describe_tls)
    app.router.add_get("/sse", sse_stream)
    app.router.add_post("/messages", sse_post)
    app[STREAMS] = []
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def ask(base: str, tls: TLS | None) -> dict[str, Any]:
    """One tools/list through a Streamable HTTP channel using a session built from `tls`."""
    rec = Recorder()
    http = make_http_session(client_ssl_context(tls), connect_timeout=5.0)
    try:
        ch = StreamableHttpChannel(
            rec.on_message, rec.on_close, url=f"{base}/mcp", headers={}, http=http, start_timeout=5.0
        )
        await ch.start()
        try:
            await ch.send(request(1, "tools/list"))
            response, _ = await rec.response(1)
        finally:
            await ch.aclose()
    finally:
        await http.close()
    result: dict[str, Any] = response["result"]
    return result


@pytest.fixture
def log_records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="mcp_barbican"):
        yield caplog


@pytest.mark.anyio
async def test_server_certificate_verification(pki: PKI, log_records: pytest.LogCaptureFixture) -> None:
    async with https_server(server_context(pki)) as base:
        for options in (None, TLS()):  # the system trust store does not know the test CA
            with pytest.raises(UpstreamUnavailable, match="(?i)certificate"):
                await ask(base, options)
        assert (await ask(base, TLS(ca_file=pki.ca_file)))["version"] == "TLSv1.3"
        assert not any("DISABLED" in r.getMessage() for r in log_records.records)
        assert (await ask(base, TLS(insecure_skip_verify=True)))["version"] == "TLSv1.3"
    assert any("verification is DISABLED" in r.getMessage() for r in log_records.records)


@pytest.mark.anyio
async def test_hostname_is_checked(pki: PKI) -> None:
    other = pki.server_ca.issue_cert("other.example")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.configure_cert(ctx)
    async with https_server(ctx) as base:
        with pytest.raises(UpstreamUnavailable, match="(?i)hostname|IP address mismatch"):
            await ask(base, TLS(ca_file=pki.ca_file))


@pytest.mark.anyio
async def test_mutual_tls(pki: PKI) -> None:
    async with https_server(server_context(pki, require_client_cert=True)) as base:
        with pytest.raises(UpstreamError):
            await ask(base, TLS(ca_file=pki.ca_file))  # no client certificate: the server refuses
        separate = TLS(ca_file=pki.ca_file, cert_file=pki.cert_file, key_file=pki.key_file)
        assert (await ask(base, separate))["peer"] == [CLIENT_NAME]
        combined = TLS(ca_file=pki.ca_file, cert_file=pki.combined_file)
        assert (await ask(base, combined))["peer"] == [CLIENT_NAME]
        # over TLS 1.2 too
        assert (await ask(base, replace(separate, max_version="1.2")))["version"] == "TLSv1.2"


@pytest.mark.anyio
async def test_min_version_is_enforced(pki: PKI) -> None:
    async with https_server(server_context(pki, max_version=ssl.TLSVersion.TLSv1_2)) as base:
        assert (await ask(base, TLS(ca_file=pki.ca_file)))["version"] == "TLSv1.2"
        with pytest.raises(UpstreamUnavailable):
            await ask(base, TLS(ca_file=pki.ca_file, min_version="1.3"))


@pytest.mark.anyio
async def test_tls12_cipher_suites_are_applied(pki: PKI) -> None:
    only = "ECDHE-ECDSA-AES256-GCM-SHA384"
    async with https_server(server_context(pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers=only)) as base:
        with pytest.raises(UpstreamUnavailable):
            await ask(base, TLS(ca_file=pki.ca_file, cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",)))
        suites = ("TLS_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
        assert (await ask(base, TLS(ca_file=pki.ca_file, cipher_suites=suites)))["cipher"] == only


@pytest.mark.anyio
async def test_sse_channel_over_tls(pki: PKI) -> None:
    async with https_server(server_context(pki)) as base:
        for options, expect_ok in ((TLS(), False), (TLS(ca_file=pki.ca_file), True)):
            rec = Recorder()
            http = make_http_session(client_ssl_context(options), connect_timeout=5.0)
            ch = SseChannel(rec.on_message, rec.on_close, url=f"{base}/sse", headers={}, http=http, start_timeout=5)
            try:
                if not expect_ok:
                    with pytest.raises(UpstreamUnavailable, match="(?i)certificate"):
                        await ch.start()
                    continue
                await ch.start()
                assert ch.endpoint is not None and str(ch.endpoint) == f"{base}/messages?s=1"
                await ch.send(request(7, "ping"))
                message: Message
                message, _ = await rec.response(7)
                assert message["result"]["version"] == "TLSv1.3"
                assert jsonrpc.is_response(message)
            finally:
                await ch.aclose()
                await http.close()
