"""Listener TLS: a real uvicorn on 127.0.0.1 with our context, certificates made by trustme."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvicorn
from cryptography.hazmat.primitives import serialization

from mcp_barbican.asgi import HEAD_HEADERS_EXTENSION
from mcp_barbican.config import ListenerLimits, ProxyConfig, ServerTLSConfig, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server.protocol import BarbicanHttpProtocol, listener_protocol
from mcp_barbican.server.runner import uvicorn_config
from mcp_barbican.server.tls import (
    DEFAULT_TLS12_CIPHERS,
    CertReloader,
    configure_uvicorn_tls,
    rfc4514_name,
    server_ssl_context,
    tls12_cipher_string,
    tls_scope_extension,
)
from mcp_barbican.types import Receive, Scope, Send

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


@dataclass
class Pki:
    ca: trustme.CA
    leaf: trustme.LeafCert
    cert_file: Path
    key_file: Path
    ca_file: Path

    def config(self, **settings: Any) -> ServerTLSConfig:
        files = {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}
        if settings.get("client_auth", "none") != "none":
            files["ca_file"] = str(self.ca_file)
        return ServerTLSConfig(**{**files, **settings})

    def install(self, leaf: trustme.LeafCert, *, key_of: trustme.LeafCert | None = None) -> None:
        """Write `leaf` (and its key, or the key of `key_of`) over the served files."""
        self.cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        self.key_file.write_bytes((key_of or leaf).private_key_pem.bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    pki = Pki(ca, leaf, tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    pki.install(leaf)
    ca.cert_pem.write_to_path(str(pki.ca_file))
    return pki


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def tls_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the scheme and the `tls` scope extension it was given."""
    if scope["type"] != "http":
        return
    tls = scope.get("extensions", {}).get("tls")
    body = json.dumps({"scheme": scope["scheme"], "tls": tls}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(context: ssl.SSLContext, *, loop: str = "uvloop") -> Iterator[int]:
    """uvicorn with the runner's protocol class, with `context`, on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue here until uvicorn accepts them: no start-up wait needed
    http = listener_protocol(ListenerLimits())
    config = uvicorn.Config(tls_echo, loop=loop, http=http, lifespan="off", log_config=None, access_log=False)
    configure_uvicorn_tls(config, context)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


@dataclass
class Exchange:
    version: str
    cipher: str
    server_cert: bytes
    answer: dict[str, Any]


def fetch(port: int, client: ssl.SSLContext) -> Exchange:
    """One HTTPS request; ssl.SSLError or ConnectionError when the server refuses."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname="localhost") as tls_sock:
            version, cipher = tls_sock.version(), tls_sock.cipher()
            server_cert = tls_sock.getpeercert(binary_form=True)
            tls_sock.sendall(REQUEST)
            data = b""
            while chunk := tls_sock.recv(65536):
                data += chunk
    if not data:
        raise ConnectionError("the server closed the connection without answering")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert version is not None and cipher is not None and server_cert is not None
    return Exchange(version, cipher[0], server_cert, json.loads(body))


def client_context(
    pki: Pki,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    cert: trustme.LeafCert | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki.ca.configure_trust(context)
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if cert is not None:
        cert.configure_cert(context)
    return context


# ---------------------------------------------------------------------------------------------
# Versions


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize(("version", "name"), [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")])
def test_tls12_and_tls13_clients_connect(pki: Pki, loop: str, version: ssl.TLSVersion, name: str) -> None:
    with serving(server_ssl_context(pki.config()), loop=loop) as port:
        exchange = fetch(port, client_context(pki, minimum=version, maximum=version))
    assert exchange.version == name
    assert exchange.server_cert == der(pki.leaf)
    assert exchange.answer["scheme"] == "https"
    assert exchange.answer["tls"]["tls_version"] == {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}[name]


def tls11_client(pki: Pki) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1/TLSv1_1 are deprecated names
        client = client_context(pki, minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at security level 0
    return client


def tls11_handshake_possible(pki: Pki) -> bool:
    """Whether this machine's OpenSSL can complete TLS 1.1 at all (a server that allows it)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    pki.leaf.configure_cert(server)
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: list[str | None] = []

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls_conn:
                outcome.append(tls_conn.version())
        except ssl.SSLError:
            outcome.append(None)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with tls11_client(pki).wrap_socket(raw, server_hostname="localhost"):
                pass
    except ssl.SSLError:
        pass
    thread.join(10)
    listener.close()
    return outcome == ["TLSv1.1"]


def test_a_tls11_client_is_refused_when_min_is_12(pki: Pki) -> None:
    offers_tls11 = tls11_handshake_possible(pki)
    with serving(server_ssl_context(pki.config(min_version="1.2"))) as port, pytest.raises(ssl.SSLError):
        fetch(port, tls11_client(pki))
    # Where the local OpenSSL cannot speak TLS 1.1 at all, the refusal above is the client's own
    # (ssl.SSLError before any byte is sent); here it can, so the refusal is the server's.
    assert offers_tls11, "this OpenSSL cannot offer TLS 1.1: only the local refusal was checked"


def test_min_13_refuses_a_tls12_only_client(pki: Pki) -> None:
    with serving(server_ssl_context(pki.config(min_version="1.3"))) as port:
        with pytest.raises(ssl.SSLError):
            fetch(port, client_context(pki, maximum=TLS12))
        assert fetch(port, client_context(pki)).version == "TLSv1.3"


def test_max_12_caps_a_tls13_client(pki: Pki) -> None:
    with serving(server_ssl_context(pki.config(max_version="1.2"))) as port:
        assert fetch(port, client_context(pki)).version == "TLSv1.2"


@pytest.mark.parametrize(
    ("minimum", "maximum"),
    [
        pytest.param("1.2", "1.3", id="1.2-1.3"),
        pytest.param("1.3", "1.3", id="1.3"),
        pytest.param("1.2", "1.2", id="1.2"),
    ],
)
def test_versions_come_from_the_config(pki: Pki, minimum: str, maximum: str) -> None:
    context = server_ssl_context(pki.config(min_version=minimum, max_version=maximum))
    versions = {"1.2": TLS12, "1.3": TLS13}
    assert (context.minimum_version, context.maximum_version) == (versions[minimum], versions[maximum])
    assert context.options & ssl.OP_NO_RENEGOTIATION


# ---------------------------------------------------------------------------------------------
# Cipher suites


def test_a_configured_tls12_suite_is_the_only_one_negotiated(pki: Pki) -> None:
    config = pki.config(cipher_suites=["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"])
    with serving(server_ssl_context(config)) as port:
        assert fetch(port, client_context(pki, maximum=TLS12)).cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"
        with pytest.raises(ssl.SSLError):
            fetch(port, client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", maximum=TLS12))


def test_the_configured_order_wins_over_the_clients(pki: Pki) -> None:
    suites = ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]
    client = client_context(pki, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384", maximum=TLS12)
    with serving(server_ssl_context(pki.config(cipher_suites=suites))) as port:
        exchange = fetch(port, client)
    assert exchange.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert exchange.answer["tls"]["cipher_suite"] == 0xC02C


def test_without_tls12_suites_only_forward_secret_aead_suites_are_offered(pki: Pki) -> None:
    context = server_ssl_context(pki.config())
    tls12 = [cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name) for name in tls12)
    with serving(context) as port, pytest.raises(ssl.SSLError):
        fetch(port, client_context(pki, ciphers="ECDHE-ECDSA-AES128-SHA256", maximum=TLS12))


@pytest.mark.parametrize(
    ("suites", "expected"),
    [
        pytest.param([], DEFAULT_TLS12_CIPHERS, id="default"),
        pytest.param(["TLS_AES_128_GCM_SHA256"], DEFAULT_TLS12_CIPHERS, id="tls13-only"),
        pytest.param(
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ],
            "ECDHE-RSA-AES128-GCM-SHA256",
            id="mapped-and-deduplicated",
        ),
    ],
)
def test_tls12_cipher_string(suites: list[str], expected: str) -> None:
    assert tls12_cipher_string(suites) == expected


def test_tls13_suites_are_accepted_but_said_to_be_openssls_choice(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_barbican.server.tls"):
        context = server_ssl_context(pki.config(cipher_suites=["TLS_AES_128_GCM_SHA256"]))
    assert "TLS_AES_128_GCM_SHA256" in caplog.text
    assert "not enforced" in caplog.text
    with serving(context) as port:
        exchange = fetch(port, client_context(pki, minimum=TLS13))
    assert exchange.cipher in {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}


def test_no_tls13_warning_without_tls13_suites(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_barbican.server.tls"):
        server_ssl_context(pki.config(cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]))
    assert caplog.text == ""


# ---------------------------------------------------------------------------------------------
# Client certificates


@pytest.mark.parametrize(
    ("client_auth", "verify_mode"),
    [
        pytest.param("none", ssl.CERT_NONE, id="none"),
        pytest.param("optional", ssl.CERT_OPTIONAL, id="optional"),
        pytest.param("required", ssl.CERT_REQUIRED, id="required"),
    ],
)
def test_client_auth_sets_the_verify_mode(pki: Pki, client_auth: str, verify_mode: ssl.VerifyMode) -> None:
    assert server_ssl_context(pki.config(client_auth=client_auth)).verify_mode == verify_mode


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_required_refuses_a_client_without_a_certificate(pki: Pki, version: ssl.TLSVersion) -> None:
    with serving(server_ssl_context(pki.config(client_auth="required"))) as port:
        # TLS 1.2 fails in the handshake; TLS 1.3 clients learn it at their first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(port, client_context(pki, minimum=version, maximum=version))


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_required_refuses_a_certificate_from_another_ca(pki: Pki, version: ssl.TLSVersion) -> None:
    stranger = trustme.CA().issue_cert("client@example.org")
    with serving(server_ssl_context(pki.config(client_auth="required"))) as port:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(port, client_context(pki, minimum=version, maximum=version, cert=stranger))


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_required_accepts_a_certificate_signed_by_ca_file(pki: Pki, version: ssl.TLSVersion) -> None:
    client = pki.ca.issue_cert("client@example.org", common_name="agent-7", organization_name="Acme, Inc.")
    with serving(server_ssl_context(pki.config(client_auth="required"))) as port:
        exchange = fetch(port, client_context(pki, minimum=version, maximum=version, cert=client))
    tls = exchange.answer["tls"]
    assert tls["client_cert_name"].startswith("CN=agent-7,OU=")
    assert tls["client_cert_name"].endswith(",O=Acme\\, Inc.")
    assert [ssl.PEM_cert_to_DER_cert(pem) for pem in tls["client_cert_chain"]] == [der(client)]
    assert tls["client_cert_error"] is None


def test_optional_accepts_clients_with_and_without_a_certificate(pki: Pki) -> None:
    client = pki.ca.issue_cert("client@example.org", common_name="agent-8")
    with serving(server_ssl_context(pki.config(client_auth="optional"))) as port:
        anonymous = fetch(port, client_context(pki))
        identified = fetch(port, client_context(pki, cert=client))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(port, client_context(pki, maximum=TLS12, cert=trustme.CA().issue_cert("x@example.org")))
    assert anonymous.answer["tls"]["client_cert_chain"] == []
    assert anonymous.answer["tls"]["client_cert_name"] is None
    assert identified.answer["tls"]["client_cert_name"].startswith("CN=agent-8,")


def test_none_asks_for_no_certificate(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    client = pki.ca.issue_cert("client@example.org", common_name="agent-9")
    with caplog.at_level(logging.WARNING, logger="mcp_barbican.server.tls"):
        context = server_ssl_context(pki.config(client_auth="none", ca_file=str(pki.ca_file)))
    assert "ca_file is ignored" in caplog.text
    with serving(context) as port:
        exchange = fetch(port, client_context(pki, cert=client))
    assert exchange.answer["tls"]["client_cert_chain"] == []


# ---------------------------------------------------------------------------------------------
# Errors at start


def test_disabled_tls_builds_no_context(pki: Pki) -> None:
    with pytest.raises(ValueError, match="disabled"):
        server_ssl_context(ServerTLSConfig(enabled=False))


@pytest.mark.parametrize(
    ("damage", "path"),
    [
        pytest.param("missing-cert", "server.tls.cert_file", id="missing-cert"),
        pytest.param("garbage-cert", "server.tls.cert_file", id="garbage-cert"),
        pytest.param("missing-key", "server.tls.key_file", id="missing-key"),
        pytest.param("garbage-key", "server.tls.key_file", id="garbage-key"),
        pytest.param("mismatched-key", "server.tls.key_file", id="mismatched-key"),
        pytest.param("encrypted-key", "server.tls.key_file", id="encrypted-key"),
        pytest.param("garbage-ca", "server.tls.ca_file", id="garbage-ca"),
    ],
)
def test_a_bad_file_is_a_config_error_naming_the_key(pki: Pki, damage: str, path: str) -> None:
    if damage == "missing-cert":
        pki.cert_file.unlink()
    elif damage == "garbage-cert":
        pki.cert_file.write_text("not a certificate")
    elif damage == "missing-key":
        pki.key_file.unlink()
    elif damage == "garbage-key":
        pki.key_file.write_text("not a key")
    elif damage == "mismatched-key":
        pki.install(pki.leaf, key_of=pki.ca.issue_cert("localhost"))
    elif damage == "encrypted-key":
        key = serialization.load_pem_private_key(pki.leaf.private_key_pem.bytes(), password=None)
        encryption = serialization.BestAvailableEncryption(b"secret")
        pki.key_file.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        )
    else:
        pki.ca_file.write_text("not a certificate")
    with pytest.raises(ConfigError) as error:
        server_ssl_context(pki.config(client_auth="required"))
    assert error.value.path == path


# ---------------------------------------------------------------------------------------------
# Reloading the certificate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_reloader_serves_a_new_certificate_without_restart(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    context = server_ssl_context(pki.config())
    clock = FakeClock()
    reloader = CertReloader(context, pki.config(), clock=clock)
    renewed = pki.ca.issue_cert("localhost", "127.0.0.1")
    with serving(context) as port:
        assert fetch(port, client_context(pki)).server_cert == der(pki.leaf)
        assert not reloader.check()
        pki.install(renewed)
        with caplog.at_level(logging.INFO, logger="mcp_barbican.server.tls"):
            assert reloader.check()
        assert fetch(port, client_context(pki)).server_cert == der(renewed)
    assert "reloaded" in caplog.text
    assert (reloader.reloads, reloader.last_reload) == (1, 1000.0)
    assert not reloader.check()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("garbage-cert", id="garbage-cert"),
        pytest.param("key-not-replaced-yet", id="key-not-replaced-yet"),
        pytest.param("key-missing", id="key-missing"),
    ],
)
def test_a_broken_new_pair_keeps_the_old_certificate(pki: Pki, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    context = server_ssl_context(pki.config())
    reloader = CertReloader(context, pki.config(), clock=FakeClock())
    renewed = pki.ca.issue_cert("localhost", "127.0.0.1")
    if damage == "garbage-cert":
        pki.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    elif damage == "key-not-replaced-yet":
        pki.install(renewed, key_of=pki.leaf)
    else:
        pki.install(renewed)
        pki.key_file.unlink()
    with caplog.at_level(logging.ERROR, logger="mcp_barbican.server.tls"):
        assert not reloader.check()
        assert not reloader.check()  # the same broken files are reported once
    assert caplog.text.count("still serving the previous one") == 1
    with serving(context) as port:
        assert fetch(port, client_context(pki)).server_cert == der(pki.leaf)
        pki.install(renewed)
        assert reloader.check()
        assert fetch(port, client_context(pki)).server_cert == der(renewed)


def test_poll_checks_once_per_interval(pki: Pki) -> None:
    clock = FakeClock()
    reloader = CertReloader(server_ssl_context(pki.config()), pki.config(), interval=5.0, clock=clock)
    pki.install(pki.ca.issue_cert("localhost"))
    clock.now += 4.9
    assert not reloader.poll()
    clock.now += 0.1
    assert reloader.poll()
    pki.install(pki.ca.issue_cert("localhost"))
    clock.now += 1.0
    assert not reloader.poll()
    clock.now += 4.0
    assert reloader.poll()


class Stop(Exception):
    pass


@pytest.mark.anyio
async def test_run_polls_on_the_injected_clock(pki: Pki) -> None:
    clock = FakeClock()
    waits: list[float] = []
    renewed = pki.ca.issue_cert("localhost")

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            pki.install(renewed)
        if len(waits) == 4:
            raise Stop
        clock.now += seconds

    reloader = CertReloader(server_ssl_context(pki.config()), pki.config(), interval=5.0, clock=clock, sleep=sleep)
    with pytest.raises(Stop):
        await reloader.run()
    assert waits == [5.0, 5.0, 5.0, 5.0]
    assert reloader.reloads == 1


def test_the_reloader_needs_files_to_watch(pki: Pki) -> None:
    context = server_ssl_context(pki.config())
    with pytest.raises(ValueError, match="cert_file"):
        CertReloader(context, ServerTLSConfig(enabled=False))


# ---------------------------------------------------------------------------------------------
# uvicorn wiring and the scope extension


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_configure_uvicorn_tls_sets_the_context_and_leaves_the_protocol_alone(pki: Pki, http: str) -> None:
    # The `tls` extension is the protocol class's (BarbicanHttpProtocol), never a swapped-in class.
    context = server_ssl_context(pki.config())
    config = uvicorn.Config(tls_echo, http=http, log_config=None)
    configure_uvicorn_tls(config, context)
    assert config.http == http
    config.load()
    assert config.ssl is context
    assert config.is_ssl


def test_configure_uvicorn_tls_must_come_before_load(pki: Pki) -> None:
    config = uvicorn.Config(tls_echo, log_config=None)
    config.load()
    with pytest.raises(RuntimeError, match="before"):
        configure_uvicorn_tls(config, server_ssl_context(pki.config()))


def test_a_plain_connection_has_no_tls_extension() -> None:
    assert tls_scope_extension(None) is None


@pytest.mark.parametrize(
    ("subject", "name"),
    [
        pytest.param(((("commonName", "a"),),), "CN=a", id="one"),
        pytest.param(
            ((("countryName", "US"),), (("organizationName", "Acme"),), (("commonName", "svc"),)),
            "CN=svc,O=Acme,C=US",
            id="reversed-order",
        ),
        pytest.param(((("commonName", "a"), ("userId", "7")),), "CN=a+UID=7", id="multi-valued"),
        pytest.param(((("commonName", 'a,b+c"d\\e<f>g;h'),),), 'CN=a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h', id="specials"),
        pytest.param(((("commonName", "#lead"),),), "CN=\\#lead", id="leading-hash"),
        pytest.param(((("commonName", " pad "),),), "CN=\\ pad\\ ", id="edge-spaces"),
        pytest.param(((("emailAddress", "a@b.c"),),), "emailAddress=a@b.c", id="unmapped-name-kept"),
    ],
)
def test_rfc4514_name(subject: Any, name: str) -> None:
    assert rfc4514_name(subject) == name


# ---------------------------------------------------------------------------------------------
# The listener the runner really builds


def test_the_runners_listener_gives_the_app_the_client_certificate(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tls = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file), "ca_file": str(pki.ca_file)}
    settings = {"storage": {"type": "memory"}, "tls": {**tls, "client_auth": "required"}}
    config = validate_model(ProxyConfig, {"server": settings, "mcps": []})
    server_config, _core = uvicorn_config(config)
    assert issubclass(server_config.http, BarbicanHttpProtocol)  # type: ignore[arg-type]
    seen: list[dict[str, Any]] = []
    proxy_app: Any = server_config.app

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope["extensions"])
        await proxy_app(scope, receive, send)

    server_config.app = recording
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(server_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        client = client_context(pki, cert=pki.ca.issue_cert("agent-9@example.test", common_name="agent-9"))
        with socket.create_connection(sock.getsockname(), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tls_sock:
                tls_sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls_sock.recv(65536):
                    data += chunk
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert data.startswith(b"HTTP/1.1 200 "), data
    (extensions,) = seen
    assert extensions["tls"]["client_cert_name"].startswith("CN=agent-9,")
    assert extensions["tls"]["client_cert_chain"]
    assert HEAD_HEADERS_EXTENSION in extensions  # both extensions on one request
