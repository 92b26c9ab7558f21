"""JWT verification: the token table, building the verifier, the pure decisions, through the layer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Final

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr

from mcp_barbican.config import JwtConfig
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.keys import compatible_algorithms, load_public_key
from mcp_barbican.security.auth import Authenticate, AuthFailure
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.jwt import (
    MAX_TOKEN_CHARS,
    ClaimRules,
    JwtVerifier,
    TokenHeader,
    claims_problem,
    principal_from_claims,
    read_header,
)
from mcp_barbican.security.oauth import www_authenticate
from mcp_barbican.security.principal import Principal
from mcp_barbican.types import Scope
from tests.security.asgi import call, make_scope, ok_app

NOW: Final = 1_700_000_000.0
ISSUER: Final = "https://issuer.test"
AUDIENCE: Final = "https://proxy.test/mcp/demo"
HS_SECRET: Final = "hs-secret-" + "0123456789abcdef" * 4  # 74 bytes: enough for HS512
OTHER_SECRET: Final = "other-secret-" + "fedcba9876543210" * 4
REQUIRED: Final = {"tenant": "acme", "verified": True, "email": "*"}
ALGORITHMS: Final = {"hs": ["HS256", "HS512"], "rsa": ["RS256", "PS256"], "ec": ["ES256"], "ed": ["EdDSA"]}

RSA_KEY: Final = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY: Final = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY: Final = ec.generate_private_key(ec.SECP256R1())
ED_KEY: Final = ed25519.Ed25519PrivateKey.generate()
OTHER_ED_KEY: Final = ed25519.Ed25519PrivateKey.generate()
PRIVATE_KEYS: Final[dict[str, Any]] = {"rsa": RSA_KEY, "ec": EC_KEY, "ed": ED_KEY}

VALID: Final = "valid"
DROP: Final = object()


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": NOW + 300,
        "iat": NOW - 10,
        "tenant": "acme",
        "verified": True,
        "email": "alice@example.com",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not DROP}


def sign(payload: dict[str, Any], key: Any, alg: str, **header: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=header or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


def forge(header: Any, payload: Any, signature: bytes = b"") -> str:
    return f"{segment(header)}.{segment(payload)}.{b64(signature)}"


def hmac_forge(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses a PEM key as an HMAC secret, an attacker does not."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def swap_payload(token: str, payload: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{segment(payload)}.{signature}"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for family, key in PRIVATE_KEYS.items():
        (folder / f"{family}.pem").write_bytes(public_pem(key))
    return folder


def config_for(family: str, keydir: Path, **changes: Any) -> JwtConfig:
    source: dict[str, Any] = (
        {"secret": HS_SECRET} if family == "hs" else {"public_key_file": str(keydir / f"{family}.pem")}
    )
    data = {
        **source,
        "algorithms": ALGORITHMS[family],
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "required_claims": REQUIRED,
        **changes,
    }
    return JwtConfig.model_validate(data)


# ---------------------------------------------------------------------------------------------
# The token table

RS = RSA_KEY
VERIFY_CASES = [
    # valid, one per family
    pytest.param("hs", sign(claims(), HS_SECRET, "HS256"), VALID, id="HS256 valid"),
    pytest.param("hs", sign(claims(), HS_SECRET, "HS512"), VALID, id="HS512 valid"),
    pytest.param("rsa", sign(claims(), RS, "RS256"), VALID, id="RS256 valid"),
    pytest.param("rsa", sign(claims(), RS, "PS256"), VALID, id="PS256 valid"),
    pytest.param("ec", sign(claims(), EC_KEY, "ES256"), VALID, id="ES256 valid"),
    pytest.param("ed", sign(claims(), ED_KEY, "EdDSA"), VALID, id="EdDSA valid"),
    pytest.param("rsa", sign(claims(aud=["other", AUDIENCE]), RS, "RS256"), VALID, id="aud list naming us"),
    pytest.param("rsa", sign(claims(exp=NOW - 59), RS, "RS256"), VALID, id="expired within leeway"),
    pytest.param("rsa", sign(claims(exp=NOW + 0.5), RS, "RS256"), VALID, id="fractional exp"),
    pytest.param("rsa", sign(claims(nbf=NOW + 59), RS, "RS256"), VALID, id="nbf within leeway"),
    pytest.param("rsa", sign(claims(email=12), RS, "RS256"), VALID, id="required claim present with any value"),
    pytest.param("rsa", sign(claims(), RS, "RS256", kid="../../etc/passwd"), VALID, id="kid ignored for a PEM key"),
    # signature
    pytest.param("rsa", sign(claims(), OTHER_RSA_KEY, "RS256"), "signature", id="RS256 other key"),
    pytest.param("hs", sign(claims(), OTHER_SECRET, "HS256"), "signature", id="HS256 other secret"),
    pytest.param("ed", sign(claims(), OTHER_ED_KEY, "EdDSA"), "signature", id="EdDSA other key"),
    pytest.param(
        "ec", swap_payload(sign(claims(), EC_KEY, "ES256"), claims(sub="mallory")), "signature", id="ES256 tampered"
    ),
    pytest.param(
        "rsa",
        sign(
            claims(),
            OTHER_RSA_KEY,
            "RS256",
            jwk=RSAAlgorithm.to_jwk(OTHER_RSA_KEY.public_key(), as_dict=True),
            jku="http://evil.test/jwks",
            x5u="http://evil.test/cert",
        ),
        "signature",
        id="embedded jwk jku x5u ignored",
    ),
    pytest.param(
        "rsa", sign(claims(exp=NOW - 3600), OTHER_RSA_KEY, "RS256"), "signature", id="signature checked before exp"
    ),
    # expiry
    pytest.param("rsa", sign(claims(exp=NOW - 61), RS, "RS256"), "expired", id="expired beyond leeway"),
    pytest.param("hs", sign(claims(exp=NOW - 60), HS_SECRET, "HS256"), "expired", id="expired at leeway edge"),
    # claims
    pytest.param("rsa", sign(claims(nbf=NOW + 61), RS, "RS256"), "claims", id="nbf in the future"),
    pytest.param("rsa", sign(claims(iss="https://evil.test"), RS, "RS256"), "claims", id="wrong iss"),
    pytest.param("rsa", sign(claims(iss=DROP), RS, "RS256"), "claims", id="missing iss"),
    pytest.param("rsa", sign(claims(aud="https://other.test"), RS, "RS256"), "claims", id="wrong aud"),
    pytest.param("rsa", sign(claims(aud=["a", "b"]), RS, "RS256"), "claims", id="aud list without us"),
    pytest.param("rsa", sign(claims(aud=DROP), RS, "RS256"), "claims", id="missing aud"),
    pytest.param("rsa", sign(claims(aud=7), RS, "RS256"), "claims", id="aud not a string"),
    pytest.param("rsa", sign(claims(exp=DROP), RS, "RS256"), "claims", id="missing exp"),
    pytest.param("rsa", sign(claims(exp="tomorrow"), RS, "RS256"), "claims", id="exp a string"),
    pytest.param("rsa", sign(claims(exp=True), RS, "RS256"), "claims", id="exp a boolean"),
    pytest.param("rsa", sign(claims(exp=float("nan")), RS, "RS256"), "claims", id="exp NaN"),
    pytest.param("rsa", sign(claims(exp=float("inf")), RS, "RS256"), "claims", id="exp Infinity"),
    pytest.param("rsa", sign(claims(sub=DROP), RS, "RS256"), "claims", id="missing sub"),
    pytest.param("rsa", sign(claims(tenant=DROP), RS, "RS256"), "claims", id="required claim missing"),
    pytest.param("rsa", sign(claims(tenant="evil"), RS, "RS256"), "claims", id="required claim wrong"),
    pytest.param("rsa", sign(claims(verified=1), RS, "RS256"), "claims", id="required true is not 1"),
    pytest.param("rsa", sign(claims(email=DROP), RS, "RS256"), "claims", id="present-any claim missing"),
    pytest.param("rsa", sign(claims(email=None), RS, "RS256"), "claims", id="present-any claim null"),
    # algorithms
    pytest.param("rsa", forge({"alg": "none", "typ": "JWT"}, claims()), "algorithm 'none'", id="alg none"),
    pytest.param("hs", forge({"alg": "None"}, claims()), "algorithm 'none'", id="alg None"),
    pytest.param("hs", forge({"alg": "NONE"}, claims(), b"sig"), "algorithm 'none'", id="alg NONE with signature"),
    pytest.param(
        "rsa",
        hmac_forge({"alg": "HS256", "typ": "JWT"}, claims(), public_pem(RSA_KEY)),
        "algorithm 'HS256' is not allowed",
        id="HS256 signed with the RSA public key",
    ),
    pytest.param("rsa", sign(claims(), RS, "RS512"), "algorithm 'RS512' is not allowed", id="RS512 not allowed"),
    pytest.param("rsa", sign(claims(), EC_KEY, "ES256"), "algorithm 'ES256' is not allowed", id="ES256 for RSA"),
    pytest.param("hs", sign(claims(), RS, "RS256"), "algorithm 'RS256' is not allowed", id="RS256 for HMAC"),
    # malformed
    pytest.param("hs", "", "malformed", id="empty"),
    pytest.param("hs", "a.b", "malformed", id="two segments"),
    pytest.param("hs", "a.b.c.d", "malformed", id="four segments"),
    pytest.param("hs", "a.b.c", "malformed", id="not base64 JSON"),
    pytest.param("hs", "!!!.@@@.###", "malformed", id="not base64"),
    pytest.param("hs", "\u00e9yJ.eyJ.sig", "malformed", id="non-ASCII"),
    pytest.param("hs", " " + sign(claims(), HS_SECRET, "HS256"), "malformed", id="leading space"),
    pytest.param("hs", forge(["HS256"], claims()), "malformed", id="header a list"),
    pytest.param("hs", forge({"typ": "JWT"}, claims()), "no 'alg'", id="header without alg"),
    pytest.param(
        "hs", hmac_forge({"alg": "HS256", "kid": 7}, claims(), HS_SECRET.encode()), "malformed", id="kid a number"
    ),
    pytest.param("hs", "e" * (MAX_TOKEN_CHARS + 1), "too long", id="too long"),
    pytest.param("hs", f"{b64(b'[' * 5000)}.{segment({})}.", "malformed", id="deeply nested header"),
    pytest.param(
        "hs",
        jwt.api_jws.encode(b"[1, 2]", HS_SECRET, algorithm="HS256"),
        "malformed",
        id="signed payload not an object",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("family", "token", "expected"), VERIFY_CASES)
async def test_verify(family: str, token: str, expected: str, keydir: Path) -> None:
    verifier = JwtVerifier(config_for(family, keydir), clock=lambda: NOW)
    verdict = await verifier.verify(token)
    if expected == VALID:
        assert isinstance(verdict, Principal), verdict
        assert verdict.id == f"jwt:{ISSUER}:alice"
        assert verdict.kind == "jwt"
        return
    assert isinstance(verdict, AuthFailure), verdict
    assert expected in verdict.reason
    assert verdict.error == "invalid_token"
    for part in token.split("."):
        assert len(part) < 8 or part not in verdict.reason  # the reason never quotes the token


@pytest.mark.anyio
async def test_authenticate_is_verify(keydir: Path) -> None:
    verifier = JwtVerifier(config_for("hs", keydir), clock=lambda: NOW)
    good = await verifier.authenticate(sign(claims(), HS_SECRET, "HS256"))
    bad = await verifier.authenticate(sign(claims(), OTHER_SECRET, "HS256"))
    assert isinstance(good, Principal)
    assert isinstance(bad, AuthFailure)


# Key confusion with a config the loader would refuse: the verifier must hold on its own.
CONFUSION_CASES = [
    pytest.param(None, "no key for algorithm 'HS256'", id="RS256 and HS256 allowed, PEM key only"),
    pytest.param(public_pem(RSA_KEY).decode(), "no usable key", id="the PEM also given as the secret"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("secret", "expected"), CONFUSION_CASES)
async def test_hs_rs_confusion_refused_even_when_both_are_allowed(
    secret: str | None, expected: str, keydir: Path
) -> None:
    config = JwtConfig.model_construct(
        secret=SecretStr(secret) if secret is not None else None,
        public_key_file=str(keydir / "rsa.pem"),
        algorithms=("RS256", "HS256"),
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    verifier = JwtVerifier(config, clock=lambda: NOW)
    forged = hmac_forge({"alg": "HS256", "typ": "JWT"}, claims(), public_pem(RSA_KEY))
    verdict = await verifier.verify(forged)
    assert isinstance(verdict, AuthFailure)
    assert expected in verdict.reason
    assert isinstance(await verifier.verify(sign(claims(), RSA_KEY, "RS256")), Principal)


@pytest.mark.anyio
async def test_leeway_is_configurable(keydir: Path) -> None:
    strict = JwtVerifier(config_for("hs", keydir, leeway=0), clock=lambda: NOW)
    token = sign(claims(exp=NOW - 1), HS_SECRET, "HS256")
    verdict = await strict.verify(token)
    assert isinstance(verdict, AuthFailure)
    assert "expired" in verdict.reason


# ---------------------------------------------------------------------------------------------
# Building the verifier


def test_certificate_pem_is_accepted(tmp_path: Path) -> None:
    ca = trustme.CA()
    path = tmp_path / "cert.pem"
    path.write_bytes(ca.cert_pem.bytes())
    assert compatible_algorithms(load_public_key(path))


BAD_KEY_FILES = [
    pytest.param(b"", "cannot use public_key_file", id="empty"),
    pytest.param(None, "cannot use public_key_file", id="missing"),
    pytest.param(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "private key",
        id="private key",
    ),
    pytest.param(public_pem(EC_KEY), "verifies none of PS256, RS256", id="EC key for RSA algorithms"),
    pytest.param(
        public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "2048 bits", id="RSA 1024"
    ),
]


@pytest.mark.parametrize(("content", "expected"), BAD_KEY_FILES)
def test_bad_public_key_file_is_a_config_error(content: bytes | None, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    config = JwtConfig.model_validate({"public_key_file": str(path), "algorithms": ["RS256", "PS256"]})
    with pytest.raises(ConfigError, match=expected):
        JwtVerifier(config)


# ---------------------------------------------------------------------------------------------
# Pure decisions

RULES: Final = ClaimRules(issuer=ISSUER, audience=frozenset({AUDIENCE}), required={"tenant": "acme"}, leeway=60)

CLAIM_CASES = [
    pytest.param(claims(), None, id="acceptable"),
    pytest.param(claims(exp=NOW - 60), "token expired", id="exp at now minus leeway"),
    pytest.param(claims(exp=NOW - 59.5), None, id="exp just inside leeway"),
    pytest.param(claims(exp=10**400), None, id="huge integer exp"),
    pytest.param(claims(nbf=NOW + 60), None, id="nbf at now plus leeway"),
    pytest.param(claims(nbf=NOW + 60.5), "invalid claims: token not valid yet", id="nbf just beyond leeway"),
    pytest.param(claims(nbf="soon"), "invalid claims: 'nbf' must be a number", id="nbf a string"),
    pytest.param(claims(iat=[1]), "invalid claims: 'iat' must be a number", id="iat a list"),
    pytest.param(claims(sub=""), "invalid claims: 'sub' is required", id="empty sub"),
    pytest.param(claims(sub=5), "invalid claims: 'sub' is required", id="sub a number"),
    pytest.param(claims(iss=5), "invalid claims: 'iss' must be a string", id="iss a number"),
    pytest.param(claims(iss=ISSUER + "/"), "invalid claims: 'iss' is not the accepted issuer", id="iss near miss"),
    pytest.param(claims(aud=[AUDIENCE, 3]), "invalid claims: 'aud' must be", id="aud list with a number"),
    pytest.param(claims(aud=AUDIENCE.upper()), "invalid claims: 'aud' does not name", id="aud case differs"),
    pytest.param(claims(tenant=["acme"]), "invalid claims: 'tenant' does not have", id="list is not the string"),
]


@pytest.mark.parametrize(("payload", "expected"), CLAIM_CASES)
def test_claims_problem(payload: dict[str, Any], expected: str | None) -> None:
    problem = claims_problem(payload, RULES, NOW)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.reason.startswith(expected)


def test_claims_unchecked_when_not_configured() -> None:
    loose = ClaimRules(leeway=0)
    assert claims_problem({"sub": "a", "exp": NOW + 1, "aud": "anyone", "iss": "anyone"}, loose, NOW) is None


REQUIRED_VALUE_CASES = [
    pytest.param({"n": 1}, {"n": 1.0}, True, id="1 equals 1.0"),
    pytest.param({"n": True}, {"n": 1}, False, id="true is not 1"),
    pytest.param({"n": 0}, {"n": False}, False, id="0 is not false"),
    pytest.param({"n": ["a", "b"]}, {"n": ["a", "b"]}, True, id="same list"),
    pytest.param({"n": ["a", "b"]}, {"n": ["b", "a"]}, False, id="list order matters"),
    pytest.param({"n": {"a": [True]}}, {"n": {"a": [True]}}, True, id="nested object"),
    pytest.param({"n": {"a": [True]}}, {"n": {"a": [1]}}, False, id="nested true is not 1"),
    pytest.param({"n": "*"}, {"n": {"x": 1}}, True, id="star means any value"),
    pytest.param({"n": "a"}, {"n": ["a"]}, False, id="string is not a one-item list"),
]


@pytest.mark.parametrize(("required", "token_claims", "accepted"), REQUIRED_VALUE_CASES)
def test_required_claim_values(required: dict[str, Any], token_claims: dict[str, Any], accepted: bool) -> None:
    rules = ClaimRules(required=required)
    assert (claims_problem({"sub": "a", "exp": NOW + 10, **token_claims}, rules, NOW) is None) is accepted


@given(offset=st.integers(-10_000, 10_000), leeway=st.integers(0, 3_600))
def test_expiry_boundary(offset: int, leeway: int) -> None:
    problem = claims_problem({"sub": "a", "exp": NOW + offset}, ClaimRules(leeway=leeway), NOW)
    assert (problem is not None and "expired" in problem.reason) is (offset <= -leeway)


PRINCIPAL_CASES = [
    pytest.param({"sub": "a", "iss": "i"}, "jwt:i:a", (), (), id="iss and sub"),
    pytest.param({"sub": "a"}, "jwt:a", (), (), id="no iss"),
    pytest.param({"sub": "a", "scope": "read  write"}, "jwt:a", (), ("read", "write"), id="scope string"),
    pytest.param({"sub": "a", "scp": ["read", "write"]}, "jwt:a", (), ("read", "write"), id="scp list"),
    pytest.param({"sub": "a", "scp": "read write"}, "jwt:a", (), ("read", "write"), id="scp string"),
    pytest.param({"sub": "a", "scope": "x", "scp": ["y"]}, "jwt:a", (), ("x",), id="scope wins over scp"),
    pytest.param({"sub": "a", "roles": ["admin", "ops"]}, "jwt:a", ("admin", "ops"), (), id="roles"),
    pytest.param({"sub": "a", "roles": ["admin", 1]}, "jwt:a", (), (), id="malformed roles grant nothing"),
    pytest.param({"sub": "a", "roles": "admin"}, "jwt:a", (), (), id="roles as a string grant nothing"),
]


@pytest.mark.parametrize(("payload", "principal_id", "roles", "scopes"), PRINCIPAL_CASES)
def test_principal_from_claims(
    payload: dict[str, Any], principal_id: str, roles: tuple[str, ...], scopes: tuple[str, ...]
) -> None:
    principal = principal_from_claims(payload)
    assert (principal.id, principal.kind, principal.roles, principal.scopes) == (principal_id, "jwt", roles, scopes)
    assert principal.claims == payload
    assert principal.mcps is None


HEADER_CASES = [
    pytest.param(sign({}, HS_SECRET, "HS256"), TokenHeader("HS256", None), id="no kid"),
    pytest.param(sign({}, HS_SECRET, "HS256", kid="k1"), TokenHeader("HS256", "k1"), id="kid"),
    pytest.param(sign({}, HS_SECRET, "HS384"), "algorithm 'HS384' is not allowed", id="not allowed"),
    pytest.param(forge({"alg": " none "}, {}), "algorithm 'none' is not allowed", id="none with spaces"),
    pytest.param(forge({"alg": "x" * 500}, {}), "'" + "x" * 40 + "' is not", id="long alg shortened"),
    pytest.param(forge({"alg": 'HS"\n\u00e9'}, {}), "'HS\"\\n\\xe9' is not allowed", id="alg escaped"),
]


@pytest.mark.parametrize(("token", "expected"), HEADER_CASES)
def test_read_header(token: str, expected: TokenHeader | str) -> None:
    verdict = read_header(token, frozenset({"HS256"}))
    if isinstance(expected, TokenHeader):
        assert verdict == expected
    else:
        assert isinstance(verdict, AuthFailure)
        assert expected in verdict.reason


@given(text=st.text(max_size=300))
def test_read_header_never_raises(text: str) -> None:
    verdict = read_header(text, frozenset({"HS256"}))
    assert isinstance(verdict, TokenHeader | AuthFailure)
    if isinstance(verdict, AuthFailure):
        assert verdict.reason.isascii()


@given(position=st.integers(0, 10_000), replacement=st.characters(codec="ascii"))
def test_a_changed_character_never_verifies_as_someone_else(position: int, replacement: str) -> None:
    token = sign(claims(), HS_SECRET, "HS256")
    index = position % len(token)
    mutated = token[:index] + replacement + token[index + 1 :]
    verifier = JwtVerifier(config_for("hs", Path(".")), clock=lambda: NOW)
    verdict = asyncio.run(verifier.verify(mutated))
    # Base64 padding bits can make a change invisible; anything else must be refused.
    if isinstance(verdict, Principal):
        assert verdict.claims == claims()
    else:
        assert isinstance(verdict, AuthFailure)


# ---------------------------------------------------------------------------------------------
# Through the authentication layer


def challenge(failure: AuthFailure, scope: Scope) -> str:
    return www_authenticate("demo", error=failure.error, description=failure.reason)


LAYER_CASES = [
    pytest.param(sign(claims(), OTHER_RSA_KEY, "RS256"), "signature", id="bad signature"),
    pytest.param(sign(claims(exp=NOW - 3600), RSA_KEY, "RS256"), "expired", id="expired"),
    pytest.param(sign(claims(aud="https://other.test"), RSA_KEY, "RS256"), "claims", id="wrong claims"),
    pytest.param(forge({"alg": "none"}, claims()), "'none'", id="alg none"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("token", "word"), LAYER_CASES)
async def test_refusals_through_the_authentication_layer(token: str, word: str, keydir: Path) -> None:
    verifier = JwtVerifier(config_for("rsa", keydir), clock=lambda: NOW)
    layer = Authenticate(
        ok_app,
        authenticator=verifier,
        header="Authorization",
        prefix="Bearer",
        mcp_id="demo",
        counters=SecurityCounters(),
        challenge=challenge,
    )
    sent = await call(layer, make_scope("POST", "/mcp/demo", [("Authorization", f"Bearer {token}")]))
    assert sent.status == 401
    assert word in sent.json()["message"]
    assert sent.headers["www-authenticate"].startswith('Bearer realm="demo", error="invalid_token"')
    assert token not in sent.body.decode() + sent.headers["www-authenticate"]
