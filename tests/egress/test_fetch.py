"""The fetcher against a loopback server and a stub resolver: refusals, the pin, redirects, and who sees them.

No traffic leaves the machine: names resolve through `StubResolver`, and every connection aiohttp
attempts is recorded (`connections`) so a test can assert that a refused address was never tried.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from mcp_barbican import egress as egress_module
from mcp_barbican.config import EgressConfig, IntrospectionConfig
from mcp_barbican.config.upstream_auth import TokenExchangeConfig
from mcp_barbican.egress import Egress, EgressRefused
from mcp_barbican.security.discovery import DiscoveredJwks
from mcp_barbican.security.introspection import UNAVAILABLE, IntrospectionRules, Introspector
from mcp_barbican.upstream.exchange import ExchangeFailed, TokenExchange
from tests.egress.support import METADATA, STUB, StubResolver, record_connections
from tests.security.test_jwks import Clock, jwks_verifier


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return record_connections(monkeypatch)


class Refusals:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, target: str, reason: str, purpose: str) -> None:
        self.seen.append((target, reason, purpose))


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """A loopback server: /ok answers JSON, /go?to=URL redirects there, /loop redirects to itself."""

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def go(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/go", go)
    app.router.add_get("/loop", loop)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


def make_egress(**config: Any) -> tuple[Egress, StubResolver, Refusals]:
    stub, refusals = StubResolver(STUB), Refusals()
    return Egress(EgressConfig(**config), resolver=stub, on_refused=refusals), stub, refusals


async def fetch(egress: Egress, url: str, max_redirects: int = 5) -> int:
    async with egress.session("test") as session:
        response = await egress.request(session, "GET", url, purpose="test", max_redirects=max_redirects)
        async with response:
            return response.status


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (f"http://{METADATA}/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://0xA9FEA9FE/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://metadata.test/", "resolves to 169.254.169.254: a cloud metadata address"),
        ("http://linklocal.test/", "link-local"),
        ("http://split.test/", "resolves to 169.254.169.254"),
    ],
)
async def test_a_redirect_to_a_refused_address_is_refused_without_connecting_there(
    origin: str, connections: list[str], target: str, reason: str
) -> None:
    egress, _, refusals = make_egress()
    with pytest.raises(EgressRefused, match="refused by the egress policy") as caught:
        await fetch(egress, f"{origin}/go?to={target}")
    assert reason in caught.value.reason
    assert set(connections) == {"127.0.0.1"}  # the redirecting server only
    assert len(refusals.seen) == 1 and reason in refusals.seen[0][1] and refusals.seen[0][2] == "test"
    assert egress.refused == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        f"http://{METADATA}/",
        "http://[fd00:ec2::254]/",
        "http://2852039166/",
        "http://0xA9FEA9FE/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://metadata.test/",
        "http://linklocal.test./",
        "http://split.test/",
    ],
)
async def test_refused_urls_are_never_connected_to(connections: list[str], url: str) -> None:
    egress, _, refusals = make_egress()
    with pytest.raises(EgressRefused):
        await fetch(egress, url)
    with pytest.raises(EgressRefused, match="refused by the egress policy"):
        await egress.check_url(url)
    assert connections == []
    assert len(refusals.seen) == 2


@pytest.mark.anyio
async def test_a_redirect_to_an_allowed_address_is_followed_and_hops_are_bounded(
    origin: str, connections: list[str]
) -> None:
    egress, stub, _ = make_egress()
    assert await fetch(egress, f"{origin}/go?to=http://loopback.test:{origin.rsplit(':', 1)[1]}/ok") == 200
    assert stub.asked == ["loopback.test"]
    assert await fetch(egress, f"{origin}/loop", max_redirects=3) == 302  # the fourth answer is returned as is
    assert await fetch(egress, f"{origin}/go?to=/ok", max_redirects=0) == 302
    assert set(connections) == {"127.0.0.1"}


@pytest.mark.anyio
async def test_allow_private_decides_for_loopback(origin: str, connections: list[str]) -> None:
    assert await fetch(make_egress(allow_private=True)[0], f"{origin}/ok") == 200
    closed, _, refusals = make_egress(allow_private=False)
    with pytest.raises(EgressRefused, match="allow_private is false"):
        await fetch(closed, f"{origin}/ok")
    with pytest.raises(EgressRefused, match="allow_private is false"):
        await closed.check_url("http://loopback.test/")
    assert len(refusals.seen) == 2
    allowed, _, _ = make_egress(allow_private=False, allow=("127.0.0.0/8",))
    assert await fetch(allowed, f"{origin}/ok") == 200


@pytest.mark.anyio
async def test_a_name_that_does_not_resolve_is_refused_by_check_url() -> None:
    egress, _, _ = make_egress()
    with pytest.raises(EgressRefused, match="does not resolve"):
        await egress.check_url("http://nowhere.test/")
    with pytest.raises(EgressRefused, match="not an http"):
        await egress.check_url("file:///etc/passwd")


@pytest.fixture
def stub_egress() -> Iterator[tuple[Egress, Refusals]]:
    egress, _, refusals = make_egress()
    previous = egress_module.install(egress)
    yield egress, refusals
    egress_module.install(previous)


@pytest.mark.anyio
async def test_a_jwks_url_resolving_to_a_metadata_address_is_refused_in_one_line(
    stub_egress: tuple[Egress, Refusals], connections: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    verifier = jwks_verifier("http://metadata.test/jwks", Clock())
    with caplog.at_level(logging.INFO):
        await verifier.start()
    await verifier.aclose()
    failures = [record.getMessage() for record in caplog.records if "fetch failed" in record.getMessage()]
    assert failures == [
        "JWKS http://metadata.test/jwks: fetch failed (http://metadata.test/jwks: refused by the egress policy "
        "(resolves to 169.254.169.254: a cloud metadata address)); no keys yet; next try in 30s at the earliest"
    ]
    assert all(record.exc_info is None and "\n" not in record.getMessage() for record in caplog.records)
    assert connections == []
    assert stub_egress[1].seen == [
        ("http://metadata.test/jwks", "resolves to 169.254.169.254: a cloud metadata address", "JWKS")
    ]


@pytest.mark.anyio
async def test_oauth_metadata_introspection_and_token_exchange_pass_the_policy(
    stub_egress: tuple[Egress, Refusals], connections: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    discovered = DiscoveredJwks("http://metadata.test", allowed=frozenset({"RS256"}), ttl=300.0, cooldown=30.0)
    with caplog.at_level(logging.WARNING, logger="mcp_barbican.security.jwks"):
        await discovered.start()
    await discovered.aclose()
    assert discovered.keys == () and discovered.fetches_failed == 1
    assert caplog.records[-1].getMessage() == (
        "JWKS http://metadata.test: fetch failed (no usable authorization server metadata ("
        "http://metadata.test/.well-known/oauth-authorization-server: refused by the egress policy "
        "(resolves to 169.254.169.254: a cloud metadata address); "
        "http://metadata.test/.well-known/openid-configuration: refused by the egress policy "
        "(resolves to 169.254.169.254: a cloud metadata address))); no keys yet; next try in 30s at the earliest"
    )

    rules = IntrospectionRules(frozenset({"https://mcp.example.com"}))
    config = IntrospectionConfig(
        url=f"http://{METADATA}/introspect", client_id="proxy", client_secret=SecretStr("s3cret")
    )
    introspector = Introspector(config, rules)
    assert await introspector.authenticate("some-token") is UNAVAILABLE
    await introspector.aclose()

    exchange = TokenExchange(
        TokenExchangeConfig(
            token_endpoint="http://split.test/token", client_id="proxy", client_secret=SecretStr("s3cret")
        )
    )
    with pytest.raises(ExchangeFailed, match="refused by the egress policy") as caught:
        await exchange.ensure("alice", "subject-token")
    assert caught.value.status == 503
    await exchange.aclose()

    assert [(target, purpose) for target, _, purpose in stub_egress[1].seen] == [
        ("http://metadata.test/.well-known/oauth-authorization-server", "OAuth metadata"),
        ("http://metadata.test/.well-known/openid-configuration", "OAuth metadata"),
        (f"http://{METADATA}/introspect", "OAuth introspection"),
        ("http://split.test/token", "token exchange"),
    ]
    assert connections == []
