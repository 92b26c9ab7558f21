"""mTLS identity: which certificate field becomes the principal, and the config that enables it."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mcp_barbican.config import MtlsConfig
from mcp_barbican.security.auth import AuthFailure
from mcp_barbican.security.mtls import CertificateAuth, CertificateIdentity, certificate_pem
from mcp_barbican.security.principal import Principal
from tests.test_config import AUTH, load_error

KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(cns: tuple[str, ...], sans: tuple[x509.GeneralName, ...] = ()) -> str:
    """A self-signed certificate with these subject CNs and SANs, as PEM (the table below needs odd ones)."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]
        + [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


URI = x509.UniformResourceIdentifier
DNS = x509.DNSName
FULL = certificate(("alice",), (DNS("a.example"), URI("spiffe://corp/alice"), DNS("b.example"), URI("spiffe://x/2")))
BARE = certificate(())

IDENTITIES = [
    pytest.param(FULL, "subject_cn", "mtls:alice", id="cn"),
    pytest.param(FULL, "san_uri", "mtls:spiffe://corp/alice", id="first-uri-san"),
    pytest.param(FULL, "san_dns", "mtls:a.example", id="first-dns-san"),
    pytest.param(BARE, "subject_cn", None, id="no-cn"),
    pytest.param(BARE, "san_uri", None, id="no-san-extension"),
    pytest.param(certificate(("x",), (DNS("only.dns"),)), "san_uri", None, id="no-uri-san"),
    pytest.param(certificate(("x",), (URI("urn:only"),)), "san_dns", None, id="no-dns-san"),
    pytest.param(certificate(("a", "b")), "subject_cn", None, id="two-cns-ambiguous"),
    pytest.param("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "san_dns", None, id="junk"),
]


@pytest.mark.parametrize(("pem", "identity", "expected"), IDENTITIES)
def test_the_configured_identity_is_the_principal(pem: str, identity: str, expected: str | None) -> None:
    verdict = CertificateIdentity(MtlsConfig.model_validate({"identity": identity})).verify(pem)
    if expected is None:
        assert isinstance(verdict, AuthFailure)
        assert verdict.status == 401
    else:
        assert isinstance(verdict, Principal)
        assert (verdict.id, verdict.kind) == (expected, "mtls")
        assert verdict.claims["sub"] == expected.removeprefix("mtls:")


def test_a_trustme_leaf_is_read_and_its_verdict_remembered() -> None:
    pem = trustme.CA().issue_cert("svc.example", common_name="svc").cert_chain_pems[0].bytes().decode()
    identity = CertificateIdentity(MtlsConfig(identity="subject_cn"))
    assert identity.remembered(pem) is None
    first = identity.verify(pem)
    assert isinstance(first, Principal) and first.id == "mtls:svc"
    assert identity.remembered(pem) is first


@pytest.mark.parametrize(
    ("scope", "found"),
    [
        ({}, False),
        ({"extensions": {}}, False),
        ({"extensions": {"tls": {"client_cert_chain": []}}}, False),
        ({"extensions": {"tls": {"client_cert_chain": ["PEM"]}}}, True),
    ],
)
def test_the_certificate_comes_from_the_asgi_tls_extension(scope: dict[str, object], found: bool) -> None:
    assert (certificate_pem(scope) == "PEM") is found


TLS_OPTIONAL = "tls: {cert_file: c, key_file: k, ca_file: a, client_auth: optional}"


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        pytest.param(
            AUTH + "mcps: [{id: a, command: x, auth: {type: mtls, mtls: {identity: subject_cn}}}]\n",
            "mcps[0].auth.type",
            "server.tls.client_auth",
            id="mtls-without-tls",
        ),
        pytest.param(
            "server: {auth: {type: mtls, mtls: {identity: san_uri}}, tls: {cert_file: c, key_file: k}}\nmcps: []\n",
            "server.auth.type",
            "client_auth: optional or required",
            id="mtls-without-client-auth",
        ),
        pytest.param(
            f"server: {{auth: {{type: mtls}}, {TLS_OPTIONAL}}}\nmcps: []\n",
            "server.auth.mtls",
            "required for type mtls",
            id="mtls-without-identity-block",
        ),
        pytest.param(
            f"server: {{auth: {{type: mtls, mtls: {{}}}}, {TLS_OPTIONAL}}}\nmcps: []\n",
            "server.auth.mtls.identity",
            "",
            id="mtls-missing-identity",
        ),
        pytest.param(
            f"server: {{auth: {{type: mtls, mtls: {{identity: email}}}}, {TLS_OPTIONAL}}}\nmcps: []\n",
            "server.auth.mtls.identity",
            "subject_cn",
            id="mtls-unknown-identity",
        ),
        pytest.param(
            f"server: {{auth: {{type: token, token: t, mtls: {{identity: san_dns}}}}, {TLS_OPTIONAL}}}\nmcps: []\n",
            "server.auth.mtls",
            "not used with type token",
            id="mtls-block-with-token",
        ),
    ],
)
def test_mtls_config_mistakes_name_their_path(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    error = load_error(tmp_path, text)
    assert error.path == path, str(error)
    assert fragment in str(error)


def test_an_mcp_registered_with_mtls_on_a_listener_without_client_certificates_is_refused() -> None:
    from mcp_barbican.config import McpConfig, ProxyConfig, validate_model
    from mcp_barbican.exceptions import ConfigError
    from mcp_barbican.server.shields import Shields

    config = validate_model(ProxyConfig, {"server": {"auth": {"type": "token", "token": "t" * 24}}, "mcps": []})
    mcp = validate_model(
        McpConfig, {"id": "api", "command": "x", "auth": {"type": "mtls", "mtls": {"identity": "san_dns"}}}
    )
    assert mcp.auth is not None
    with pytest.raises(ConfigError) as caught:
        Shields(config).authenticator(mcp.auth, mcp)
    assert caught.value.path == "mcps.api.auth.type"


@pytest.mark.anyio
async def test_the_pipeline_admits_a_certificate_both_ways_and_forwards_no_credential() -> None:
    from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
    from mcp_barbican.config import ProxyConfig, validate_model
    from mcp_barbican.security.pipeline import Head, Pipeline
    from mcp_barbican.server.shields import Shields
    from mcp_barbican.types import Receive, Scope, Send
    from tests.security.asgi import call, make_scope

    tls = {"cert_file": "c", "key_file": "k", "ca_file": "a", "client_auth": "optional"}
    raw = {"server": {"tls": tls, "auth": {"type": "mtls", "mtls": {"identity": "subject_cn"}}}}
    config = validate_model(ProxyConfig, {**raw, "mcps": [{"id": "m", "command": "x"}]})
    shields = Shields(config)
    mcp = config.mcps[0]
    authenticator = shields.authenticator(config.effective_auth(mcp), mcp)
    seen: list[Scope] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    pipeline = Pipeline(endpoint, shields.policies(mcp, authenticator, config))
    policy = pipeline.policy("authentication")
    assert isinstance(policy, CertificateAuth) and pipeline.fast_path
    pem = certificate(("alice",))

    def scope_with(chain: list[str]) -> Scope:
        scope = make_scope("POST", "/mcp/m", [("authorization", "Bearer client-secret")])
        scope["extensions"] = {"tls": {"client_cert_chain": chain}}
        scope[CLIENT_IP_KEY] = "127.0.0.1"
        return scope

    assert not policy.fast(scope_with([pem]), Head("127.0.0.1", {}, [])), "a new certificate goes to the layers"
    assert (await call(pipeline, scope_with([pem]), b"")).status == 200
    assert policy.fast(scope_with([pem]), Head("127.0.0.1", {}, []))
    assert (await call(pipeline, scope_with([pem]), b"")).status == 200
    for scope in seen:
        assert scope[PRINCIPAL_KEY].id == "mtls:alice"
        assert all(name != b"authorization" for name, _ in scope["headers"])
    refused = await call(pipeline, scope_with([]), b"")
    assert refused.status == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert len(seen) == 2
