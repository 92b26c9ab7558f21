"""JWKS: which published keys may verify which algorithms, and the cache against a local server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from mcp_barbican.config import JwtConfig
from mcp_barbican.keys import compatible_algorithms
from mcp_barbican.security.auth import AuthFailure
from mcp_barbican.security.jwks import MAX_JWKS_BYTES, MAX_JWKS_KEYS, parse_jwks
from mcp_barbican.security.jwt import JwtVerifier
from mcp_barbican.security.principal import Principal
from tests.security.test_jwt import AUDIENCE, EC_KEY, ED_KEY, ISSUER, NOW, RSA_KEY, b64, claims, sign


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------------------------------------
# Keys

COMPATIBLE_CASES = [
    pytest.param(RSA_KEY.public_key(), {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, id="RSA 2048"),
    pytest.param(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), set(), id="RSA 1024"),
    pytest.param(EC_KEY.public_key(), {"ES256"}, id="P-256"),
    pytest.param(ec.generate_private_key(ec.SECP384R1()).public_key(), {"ES384"}, id="P-384"),
    pytest.param(ec.generate_private_key(ec.SECP521R1()).public_key(), {"ES512"}, id="P-521"),
    pytest.param(ec.generate_private_key(ec.SECP256K1()).public_key(), set(), id="secp256k1"),
    pytest.param(ED_KEY.public_key(), {"EdDSA"}, id="Ed25519"),
    pytest.param(ed448.Ed448PrivateKey.generate().public_key(), {"EdDSA"}, id="Ed448"),
    pytest.param(b"secret", {"HS256", "HS384", "HS512"}, id="HMAC secret"),
]


@pytest.mark.parametrize(("key", "expected"), COMPATIBLE_CASES)
def test_compatible_algorithms(key: Any, expected: set[str]) -> None:
    assert compatible_algorithms(key) == expected


def rsa_jwk(key: Any = RSA_KEY, **fields: Any) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), **fields}


def ec_jwk(key: Any = EC_KEY, **fields: Any) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), **fields}


JWKS_ALLOWED: Final = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
JWKS_KEY_CASES = [
    pytest.param(rsa_jwk(kid="k"), {"RS256", "PS256"}, id="RSA without alg"),
    pytest.param(rsa_jwk(kid="k", alg="PS256"), {"PS256"}, id="RSA bound to its alg"),
    pytest.param(rsa_jwk(kid="k", use="sig"), {"RS256", "PS256"}, id="use sig"),
    pytest.param(rsa_jwk(kid="k", use="enc"), None, id="use enc"),
    pytest.param(rsa_jwk(kid="k", key_ops=["verify"]), {"RS256", "PS256"}, id="key_ops verify"),
    pytest.param(rsa_jwk(kid="k", key_ops=["encrypt"]), None, id="key_ops without verify"),
    pytest.param(rsa_jwk(kid="k", alg="RS512"), None, id="alg not allowed"),
    pytest.param(rsa_jwk(kid="k", alg="ES256"), None, id="alg of another family"),
    pytest.param(rsa_jwk(kid=7), None, id="kid not a string"),
    pytest.param(rsa_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024), kid="k"), None, id="weak"),
    pytest.param(
        {**RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), "kid": "k"}, None, id="private key published by mistake"
    ),
    pytest.param(ec_jwk(kid="k"), {"ES256"}, id="EC P-256"),
    pytest.param(ec_jwk(ec.generate_private_key(ec.SECP384R1()), kid="k"), None, id="EC P-384 not allowed"),
    pytest.param({**OKPAlgorithm.to_jwk(ED_KEY.public_key(), as_dict=True), "kid": "k"}, {"EdDSA"}, id="OKP Ed25519"),
    pytest.param({"kty": "oct", "k": b64(b"s" * 64), "kid": "k", "alg": "HS256"}, None, id="symmetric key"),
    pytest.param({"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "k"}, None, id="garbage modulus"),
    pytest.param({"kty": "XYZ", "kid": "k"}, None, id="unknown kty"),
    pytest.param("not a key", None, id="not an object"),
]


@pytest.mark.parametrize(("raw", "expected"), JWKS_KEY_CASES)
def test_parse_jwks_keys(raw: Any, expected: set[str] | None) -> None:
    allowed = JWKS_ALLOWED | {"HS256"}  # even when HS256 is allowed, a published secret is not used
    keys = parse_jwks({"keys": [raw, ec_jwk(kid="control")]}, allowed)
    assert keys[-1].kid == "control"
    kept = [key for key in keys if key.kid != "control"]
    if expected is None:
        assert kept == []
    else:
        assert [key.algorithms for key in kept] == [expected]


@pytest.mark.parametrize(
    "document", [pytest.param([], id="list"), pytest.param({}, id="no keys"), pytest.param({"keys": {}}, id="dict")]
)
def test_parse_jwks_refuses_what_is_not_a_set(document: Any) -> None:
    with pytest.raises(ValueError, match="not a JWK Set"):
        parse_jwks(document, JWKS_ALLOWED)


def test_parse_jwks_keeps_a_bounded_number_of_keys() -> None:
    document = {"keys": [ec_jwk(kid=f"k{n}") for n in range(MAX_JWKS_KEYS + 50)]}
    keys = parse_jwks(document, JWKS_ALLOWED)
    assert [key.kid for key in keys] == [f"k{n}" for n in range(MAX_JWKS_KEYS)]


# ---------------------------------------------------------------------------------------------
# The cache against a local server


class JwksServer:
    """Serves a JWK Set on 127.0.0.1 and counts the requests."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": [rsa_jwk(kid="k1", use="sig")]}
        self.status = 200
        self.body: bytes | None = None
        self.chunked = False
        self.moved = False
        self.requests = 0
        self.arrived = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.moved:
            raise web.HTTPFound("/elsewhere")
        if self.chunked:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            body = self.body or b""
            for start in range(0, len(body), 16_384):
                await response.write(body[start : start + 16_384])
            await response.write_eof()
            return response
        if self.body is not None:
            return web.Response(body=self.body, status=self.status, content_type="application/json")
        return web.json_response(self.document, status=self.status)

    async def elsewhere(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(GHOST_SET)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self.handle)
        app.router.add_get("/elsewhere", self.elsewhere)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/jwks"

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    jwks = JwksServer()
    await jwks.start()
    yield jwks
    await jwks.stop()


TTL: Final = 300.0
COOLDOWN: Final = 30.0
K1_TOKEN: Final = sign(claims(), RSA_KEY, "RS256", kid="k1")
K2_TOKEN: Final = sign(claims(), EC_KEY, "ES256", kid="k2")
GHOST_TOKEN: Final = sign(claims(), RSA_KEY, "RS256", kid="ghost")


def jwks_verifier(url: str, clock: Clock, http: Callable[[], aiohttp.ClientSession] | None = None) -> JwtVerifier:
    config = JwtConfig.model_validate(
        {
            "jwks_url": url,
            "algorithms": ["RS256", "ES256"],
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_cache_ttl": TTL,
            "jwks_refresh_cooldown": COOLDOWN,
        }
    )
    return JwtVerifier(config, http=http, clock=clock)


@pytest.fixture
async def started(server: JwksServer) -> AsyncIterator[tuple[JwtVerifier, Clock]]:
    clock = Clock()
    verifier = jwks_verifier(server.url, clock)
    await verifier.start()
    assert server.requests == 1
    server.arrived.clear()
    yield verifier, clock
    await verifier.aclose()


async def verified(verifier: JwtVerifier, token: str) -> bool:
    return isinstance(await verifier.verify(token), Principal)


async def reason(verifier: JwtVerifier, token: str) -> str:
    verdict = await verifier.verify(token)
    assert isinstance(verdict, AuthFailure), verdict
    return verdict.reason


@pytest.mark.anyio
async def test_jwks_prefetched_then_served_from_cache(server: JwksServer, started: tuple[JwtVerifier, Clock]) -> None:
    verifier, clock = started
    assert await verified(verifier, K1_TOKEN)
    clock.advance(TTL - 1)
    assert await verified(verifier, K1_TOKEN)
    assert server.requests == 1


@pytest.mark.anyio
async def test_jwks_rotation_picked_up_after_exactly_one_refresh(
    server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    server.document = {"keys": [rsa_jwk(kid="k1"), ec_jwk(kid="k2")]}
    assert await reason(verifier, K2_TOKEN) == "no key for kid 'k2'"  # within the cooldown of the prefetch
    assert server.requests == 1
    clock.advance(COOLDOWN)
    assert await verified(verifier, K2_TOKEN)
    assert server.requests == 2
    assert await verified(verifier, K2_TOKEN)
    assert await verified(verifier, K1_TOKEN)
    assert server.requests == 2


@pytest.mark.anyio
async def test_unknown_kid_refreshes_at_most_once_per_cooldown(
    server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    clock.advance(COOLDOWN)
    for _ in range(5):
        assert await reason(verifier, GHOST_TOKEN) == "no key for kid 'ghost'"
    assert server.requests == 2
    clock.advance(COOLDOWN - 1)
    await reason(verifier, GHOST_TOKEN)
    assert server.requests == 2
    clock.advance(1)
    await reason(verifier, GHOST_TOKEN)
    assert server.requests == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "accepted"), [pytest.param(K2_TOKEN, True, id="new kid"), pytest.param(GHOST_TOKEN, False, id="ghost")]
)
async def test_concurrent_unknown_kids_share_one_fetch(
    token: str, accepted: bool, server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    server.document = {"keys": [rsa_jwk(kid="k1"), ec_jwk(kid="k2")]}
    server.gate = asyncio.Event()
    clock.advance(COOLDOWN)
    tasks = [asyncio.ensure_future(verifier.verify(token)) for _ in range(50)]
    await server.arrived.wait()
    server.gate.set()
    verdicts = await asyncio.gather(*tasks)
    assert [isinstance(verdict, Principal) for verdict in verdicts] == [accepted] * 50
    assert server.requests == 2


# Each failure would otherwise have made the ghost key known.
GHOST_SET: Final = {"keys": [rsa_jwk(kid="k1"), rsa_jwk(kid="ghost")]}
PADDED_GHOST_SET: Final = json.dumps(GHOST_SET).encode() + b" " * MAX_JWKS_BYTES


def oversized(server: JwksServer, *, chunked: bool) -> None:
    server.body = PADDED_GHOST_SET
    server.chunked = chunked


FAILURES: Final[dict[str, Callable[[JwksServer], None]]] = {
    "status 500": lambda s: setattr(s, "status", 500),
    "redirect": lambda s: setattr(s, "moved", True),
    "not JSON": lambda s: setattr(s, "body", b"<html>oops</html>"),
    "keys not a list": lambda s: setattr(s, "body", b'{"keys": "k1"}'),
    "no usable key": lambda s: setattr(s, "document", {"keys": [rsa_jwk(kid="ghost", use="enc")]}),
    "too large": lambda s: oversized(s, chunked=False),
    "too large, chunked": lambda s: oversized(s, chunked=True),
}


@pytest.mark.anyio
@pytest.mark.parametrize("failure", [*FAILURES, "server gone"])
async def test_failed_fetch_keeps_the_last_good_keys(
    failure: str, server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    if failure == "server gone":
        await server.stop()
    else:
        FAILURES[failure](server)
    clock.advance(COOLDOWN)
    assert await reason(verifier, GHOST_TOKEN) == "no key for kid 'ghost'"
    assert verifier.jwks is not None
    assert verifier.jwks.fetches_failed == 1
    assert await verified(verifier, K1_TOKEN)
    clock.advance(TTL)
    assert await verified(verifier, K1_TOKEN)


@pytest.mark.anyio
async def test_expired_cache_refreshes_in_the_background(
    server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    server.document = {"keys": [ec_jwk(kid="k2")]}  # k1 retired
    server.gate = asyncio.Event()  # the refresh hangs until the test lets it answer
    clock.advance(TTL)
    assert await asyncio.wait_for(verified(verifier, K1_TOKEN), timeout=5)  # the stale set verifies meanwhile
    waiting = asyncio.ensure_future(verified(verifier, K2_TOKEN))  # an unknown kid waits for that same refresh
    await server.arrived.wait()
    server.gate.set()
    assert await waiting
    assert server.requests == 2
    assert await reason(verifier, K1_TOKEN) == "no key for kid 'k1'"
    assert server.requests == 2


@pytest.mark.anyio
async def test_expired_cache_refresh_failure_keeps_the_keys(
    server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    server.status = 503
    clock.advance(TTL)
    assert await verified(verifier, K1_TOKEN)
    assert await reason(verifier, GHOST_TOKEN) == "no key for kid 'ghost'"
    assert server.requests == 2
    assert await verified(verifier, K1_TOKEN)


@pytest.mark.anyio
async def test_a_caller_giving_up_does_not_cancel_the_shared_fetch(
    server: JwksServer, started: tuple[JwtVerifier, Clock]
) -> None:
    verifier, clock = started
    server.document = {"keys": [rsa_jwk(kid="k1"), ec_jwk(kid="k2")]}
    server.gate = asyncio.Event()
    clock.advance(COOLDOWN)
    impatient = asyncio.ensure_future(verifier.verify(K2_TOKEN))
    patient = asyncio.ensure_future(verifier.verify(K2_TOKEN))
    await server.arrived.wait()
    impatient.cancel()
    server.gate.set()
    assert isinstance(await patient, Principal)
    assert impatient.cancelled()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks"


@pytest.mark.anyio
async def test_start_failure_is_logged_and_retried_lazily(server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    server.status = 500
    verifier = jwks_verifier(server.url, clock)
    await verifier.start()
    assert "fetch failed (HTTP status 500); no keys yet" in caplog.text
    assert await reason(verifier, K1_TOKEN) == "no key for kid 'k1'"
    assert server.requests == 1
    server.status = 200
    clock.advance(COOLDOWN)
    assert await verified(verifier, K1_TOKEN)
    assert server.requests == 2
    await verifier.aclose()


@pytest.mark.anyio
async def test_start_with_an_unreachable_jwks_does_not_raise() -> None:
    verifier = jwks_verifier(closed_port_url(), Clock())
    await verifier.start()
    assert await reason(verifier, K1_TOKEN) == "no key for kid 'k1'"
    await verifier.aclose()


@pytest.mark.anyio
async def test_kid_is_looked_up_only_in_memory(server: JwksServer, started: tuple[JwtVerifier, Clock]) -> None:
    verifier, clock = started
    clock.advance(COOLDOWN)
    token = sign(claims(), RSA_KEY, "RS256", kid='../../etc/passwd"\n')
    assert await reason(verifier, token) == "no key for kid '../../etc/passwd\"\\n'"
    assert server.requests == 2


@pytest.mark.anyio
async def test_a_caller_session_is_used_and_left_open(server: JwksServer) -> None:
    async with aiohttp.ClientSession() as session:
        verifier = jwks_verifier(server.url, Clock(), http=lambda: session)
        await verifier.start()
        assert await verified(verifier, K1_TOKEN)
        await verifier.aclose()
        assert not session.closed
        assert server.requests == 1


@pytest.mark.anyio
async def test_aclose_cancels_a_hanging_fetch(server: JwksServer) -> None:
    server.gate = asyncio.Event()  # the server never answers
    verifier = jwks_verifier(server.url, Clock())
    waiting = asyncio.ensure_future(verifier.verify(K1_TOKEN))
    await server.arrived.wait()
    await asyncio.wait_for(verifier.aclose(), timeout=5)
    with pytest.raises(asyncio.CancelledError):
        await waiting
