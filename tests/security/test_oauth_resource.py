"""The OAuth 2.1 resource server's pure decisions: discovery, audience, scopes, introspection verdicts and cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
from aiohttp import web

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.config import AuthConfig, OAuth2Config, ProxyConfig, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.auth import Authenticate, AuthFailure
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.discovery import DiscoveredJwks, jwks_uri_from_metadata, metadata_urls
from mcp_barbican.security.introspection import (
    IntrospectionRules,
    VerdictCache,
    cache_until,
    introspection_verdict,
)
from mcp_barbican.security.oauth import missing_scopes, protected_resource_metadata, resource_for
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.resource import ScopedResource, oauth_audience
from mcp_barbican.server.shields import challenge_for
from mcp_barbican.types import Receive, Scope, Send
from tests.security.asgi import call, make_scope
from tests.security.test_jwks import rsa_jwk

ISSUER: Final = "https://as.test/tenant"
RESOURCE: Final = "https://proxy.test/mcp/demo"
NOW: Final = 1_800_000_000.0

METADATA_URLS = [
    pytest.param(
        ISSUER,
        (
            "https://as.test/.well-known/oauth-authorization-server/tenant",
            "https://as.test/tenant/.well-known/openid-configuration",
        ),
        id="path",
    ),
    pytest.param(
        "https://as.test",
        ("https://as.test/.well-known/oauth-authorization-server", "https://as.test/.well-known/openid-configuration"),
        id="host",
    ),
    pytest.param(
        "http://127.0.0.1:9000/",
        (
            "http://127.0.0.1:9000/.well-known/oauth-authorization-server",
            "http://127.0.0.1:9000/.well-known/openid-configuration",
        ),
        id="slash",
    ),
]


@pytest.mark.parametrize(("issuer", "expected"), METADATA_URLS)
def test_metadata_urls(issuer: str, expected: tuple[str, str]) -> None:
    assert metadata_urls(issuer) == expected


JWKS_URI_CASES: list[Any] = [
    pytest.param({"issuer": ISSUER, "jwks_uri": "https://as.test/keys"}, "https://as.test/keys", id="ok"),
    pytest.param({"issuer": ISSUER + "/", "jwks_uri": "https://as.test/keys"}, "not the configured", id="slash"),
    pytest.param({"issuer": "https://evil.test", "jwks_uri": "https://evil/k"}, "not the configured", id="other"),
    pytest.param({"jwks_uri": "https://as.test/keys"}, "not the configured", id="no-issuer"),
    pytest.param({"issuer": ISSUER}, "no jwks_uri", id="no-jwks"),
    pytest.param({"issuer": ISSUER, "jwks_uri": 3}, "no jwks_uri", id="jwks-not-string"),
    pytest.param({"issuer": ISSUER, "jwks_uri": "file:///etc/passwd"}, "not an http(s) URL", id="file"),
    pytest.param({"issuer": ISSUER, "jwks_uri": "https://u:p@as.test/k"}, "not an http(s) URL", id="userinfo"),
    pytest.param([ISSUER], "not a JSON object", id="list"),
]


@pytest.mark.parametrize(("document", "expected"), JWKS_URI_CASES)
def test_jwks_uri_from_metadata(document: object, expected: str) -> None:
    if expected.startswith("https://"):
        assert jwks_uri_from_metadata(document, ISSUER) == expected
    else:
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            jwks_uri_from_metadata(document, ISSUER)


RULES: Final = IntrospectionRules(frozenset([RESOURCE]), ISSUER, 60.0)
ACTIVE: Final[dict[str, Any]] = {
    "active": True,
    "iss": ISSUER,
    "sub": "alice",
    "aud": RESOURCE,
    "exp": NOW + 600,
    "scope": "mcp:tools mcp:read",
}

VERDICTS: list[Any] = [
    pytest.param({}, "token is not active", id="no-active"),
    pytest.param({**ACTIVE, "active": "true"}, "token is not active", id="active-string"),
    pytest.param({"active": False}, "token is not active", id="inactive"),
    pytest.param({**ACTIVE, "exp": NOW - 61}, "token expired", id="expired"),
    pytest.param({**ACTIVE, "exp": "soon"}, "'exp' must be a number", id="exp-string"),
    pytest.param({**ACTIVE, "aud": "https://other.test/mcp/demo"}, "does not name this resource", id="other-aud"),
    pytest.param({**ACTIVE, "aud": ["x", RESOURCE]}, "oauth:https://as.test/tenant:alice", id="aud-list"),
    pytest.param({k: v for k, v in ACTIVE.items() if k != "aud"}, "'aud' is required", id="no-aud"),
    pytest.param({**ACTIVE, "iss": "https://evil.test"}, "not the accepted issuer", id="other-iss"),
    pytest.param({k: v for k, v in ACTIVE.items() if k != "iss"}, "oauth:https://as.test/tenant:alice", id="no-iss"),
    pytest.param(
        {**{k: v for k, v in ACTIVE.items() if k != "sub"}, "client_id": "bot"},
        "oauth:https://as.test/tenant:client/bot",
        id="client-only",
    ),
    pytest.param({k: v for k, v in ACTIVE.items() if k != "sub"}, "'sub' or 'client_id' is required", id="nobody"),
    pytest.param(ACTIVE, "oauth:https://as.test/tenant:alice", id="active"),
]


@pytest.mark.parametrize(("response", "expected"), VERDICTS)
def test_introspection_verdict(response: dict[str, Any], expected: str) -> None:
    verdict = introspection_verdict(response, RULES, NOW)
    if expected.startswith("oauth:"):
        assert isinstance(verdict, Principal) and verdict.id == expected and verdict.kind == "oauth"
    else:
        assert isinstance(verdict, AuthFailure) and expected in verdict.reason and verdict.status == 401


def test_introspected_principal_carries_scopes() -> None:
    verdict = introspection_verdict(ACTIVE, RULES, NOW)
    assert isinstance(verdict, Principal) and verdict.scopes == ("mcp:tools", "mcp:read")


CACHE_UNTIL = [
    pytest.param(ACTIVE, NOW + 300, id="capped-by-max-ttl"),
    pytest.param({**ACTIVE, "exp": NOW + 30}, NOW + 30, id="until-exp"),
    pytest.param({k: v for k, v in ACTIVE.items() if k != "exp"}, NOW + 300, id="no-exp"),
    pytest.param({"active": False}, NOW + 10, id="inactive-briefly"),
]


@pytest.mark.parametrize(("response", "expected"), CACHE_UNTIL)
def test_cache_until(response: dict[str, Any], expected: float) -> None:
    verdict = introspection_verdict(response, RULES, NOW)
    assert cache_until(verdict, NOW, max_ttl=300, inactive_ttl=10) == expected


def test_verdict_cache_is_bounded_lru_and_expires() -> None:
    cache = VerdictCache(size=2)
    first, second, third = (Principal(id=f"oauth:{n}", kind="oauth") for n in "abc")
    cache.put(b"a", first, NOW + 10, NOW)
    cache.put(b"b", second, NOW + 10, NOW)
    assert cache.get(b"a", NOW) is first  # a is now the most recently used
    cache.put(b"c", third, NOW + 10, NOW)
    assert len(cache) == 2 and cache.get(b"b", NOW) is None and cache.get(b"a", NOW) is first
    assert cache.get(b"a", NOW + 10) is None and len(cache) == 1  # expired entries leave
    cache.put(b"d", first, NOW, NOW)  # already expired: never stored
    assert cache.get(b"d", NOW) is None


MISSING = [
    pytest.param(("a", "b"), ("a",), (), id="has-all"),
    pytest.param(("a",), ("a", "b"), ("b",), id="one-missing"),
    pytest.param((), ("b", "a"), ("b", "a"), id="none-granted-order-kept"),
    pytest.param(("A",), ("a",), ("a",), id="case-sensitive"),
    pytest.param(("a",), (), (), id="none-required"),
]


@pytest.mark.parametrize(("granted", "required", "expected"), MISSING)
def test_missing_scopes(granted: tuple[str, ...], required: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert missing_scopes(granted, required) == expected


class _Fixed:
    def __init__(self, verdict: Principal | AuthFailure) -> None:
        self.verdict = verdict

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        return self.verdict


@pytest.mark.anyio
async def test_scoped_resource_refuses_a_missing_scope_with_403() -> None:
    principal = Principal(id="jwt:i:s", kind="jwt", scopes=("mcp:read",))
    refused = await ScopedResource(_Fixed(principal), ("mcp:read", "mcp:tools")).authenticate("t")
    assert refused == AuthFailure("missing scope: mcp:tools", "insufficient_scope", 403, scope="mcp:read mcp:tools")
    assert await ScopedResource(_Fixed(principal), ("mcp:read",)).authenticate("t") is principal
    failure = AuthFailure("token expired")
    assert await ScopedResource(_Fixed(failure), ("mcp:read",)).authenticate("t") is failure


def _oauth2(**fields: Any) -> OAuth2Config:
    return OAuth2Config.model_validate({"issuer": ISSUER, **fields})


AUDIENCES = [
    pytest.param({}, "https://proxy.test", frozenset([RESOURCE]), id="public-url"),
    pytest.param({}, "https://proxy.test/", frozenset([RESOURCE]), id="public-url-slash"),
    pytest.param({"audience": "api"}, "https://proxy.test", frozenset(["api"]), id="explicit-wins"),
    pytest.param({"audience": ["a", "b"]}, None, frozenset(["a", "b"]), id="explicit-list"),
    pytest.param({"resource": "https://front.test/x"}, None, frozenset(["https://front.test/x"]), id="resource"),
]


@pytest.mark.parametrize(("fields", "public_url", "expected"), AUDIENCES)
def test_oauth_audience(fields: dict[str, Any], public_url: str | None, expected: frozenset[str]) -> None:
    assert oauth_audience(_oauth2(**fields), public_url, "demo") == expected


def test_oauth_audience_without_public_url_fails_closed() -> None:
    with pytest.raises(ConfigError, match="public_url"):
        oauth_audience(_oauth2(), None, "demo")


def test_server_auth_oauth2_without_public_url_names_the_server_key() -> None:
    document = {
        "server": {"auth": {"type": "oauth2", "oauth2": {"issuer": ISSUER}}},
        "mcps": [{"id": "demo", "command": "x"}],
    }
    with pytest.raises(ConfigError) as caught:
        validate_model(ProxyConfig, document)
    assert caught.value.path == "server.auth.oauth2.audience"
    document["server"]["public_url"] = "https://proxy.test"  # type: ignore[index]
    config = ProxyConfig.model_validate(document)
    assert config.server.auth is not None and config.server.auth.oauth2 is not None
    assert resource_for(config.server.auth.oauth2, config.server.public_url, "demo") == RESOURCE


def test_metadata_from_issuer_and_required_scopes() -> None:
    document = protected_resource_metadata(RESOURCE, _oauth2(required_scopes=["mcp:tools"]), None)
    assert document == {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp:tools"],
        "bearer_methods_supported": ["header"],
    }


def test_insufficient_scope_challenge_names_scope_and_metadata() -> None:
    auth = AuthConfig.model_validate({"type": "oauth2", "oauth2": {"issuer": ISSUER, "audience": "x"}})
    challenge = challenge_for(auth, "demo", "https://proxy.test")
    failure = AuthFailure("missing scope: mcp:tools", "insufficient_scope", 403, scope="mcp:tools")
    value = challenge(failure, {"type": "http", "headers": []})
    assert 'error="insufficient_scope"' in value and 'scope="mcp:tools"' in value
    assert 'resource_metadata="https://proxy.test/.well-known/oauth-protected-resource/mcp/demo"' in value


async def _unreachable(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("a refused request reached the app")


@pytest.mark.anyio
async def test_a_missing_scope_is_403_and_feeds_no_ban() -> None:
    principal = Principal(id="jwt:i:s", kind="jwt", scopes=("mcp:read",))
    failures: list[str | None] = []
    layer = Authenticate(
        _unreachable,
        authenticator=ScopedResource(_Fixed(principal), ("mcp:tools",)),
        header="Authorization",
        prefix="Bearer",
        mcp_id="a",
        counters=SecurityCounters(),
        challenge=lambda failure, _scope: f'Bearer scope="{failure.scope}"',
        on_failure=failures.append,
    )
    scope = make_scope("POST", headers=[("Authorization", "Bearer t")])
    scope[CLIENT_IP_KEY] = "10.0.0.9"
    sent = await call(layer, scope)
    assert sent.status == 403 and sent.headers["www-authenticate"] == 'Bearer scope="mcp:tools"'
    assert sent.json() == {"error": "insufficient_scope", "message": "missing scope: mcp:tools"}
    assert failures == []  # a valid token short of a scope is no guessing: no ban


class _AuthorizationServer:
    """Serves OIDC discovery (RFC 8414 answers 404) and a JWKS on 127.0.0.1, with a chosen `issuer`."""

    def __init__(self) -> None:
        self.issuer_override: str | None = None
        self.paths: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if request.path == "/tenant/.well-known/openid-configuration":
            issuer = self.issuer_override or f"{self.url}/tenant"
            return web.json_response({"issuer": issuer, "jwks_uri": f"{self.url}/keys"})
        if request.path == "/keys":
            return web.json_response({"keys": [rsa_jwk(kid="k1")]})
        return web.json_response({"error": "not_found"}, status=404)


@pytest.fixture
async def authorization_server() -> AsyncIterator[_AuthorizationServer]:
    server = _AuthorizationServer()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.mark.anyio
async def test_discovery_falls_back_to_oidc_and_finds_the_keys(authorization_server: _AuthorizationServer) -> None:
    jwks = DiscoveredJwks(f"{authorization_server.url}/tenant", allowed=frozenset(["RS256"]), ttl=300, cooldown=0)
    await jwks.start()
    await jwks.aclose()
    assert [key.kid for key in jwks.keys] == ["k1"]
    assert jwks.jwks_uri == f"{authorization_server.url}/keys"
    assert authorization_server.paths == [
        "/.well-known/oauth-authorization-server/tenant",
        "/tenant/.well-known/openid-configuration",
        "/keys",
    ]


@pytest.mark.anyio
async def test_discovery_refuses_metadata_for_another_issuer(authorization_server: _AuthorizationServer) -> None:
    authorization_server.issuer_override = "https://evil.test/tenant"
    jwks = DiscoveredJwks(f"{authorization_server.url}/tenant", allowed=frozenset(["RS256"]), ttl=300, cooldown=0)
    await jwks.start()
    await jwks.aclose()
    assert jwks.keys == () and jwks.fetches_failed == 1 and "/keys" not in authorization_server.paths
