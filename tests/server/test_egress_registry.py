"""Registrations through the registry in-process with a stub resolver: names that resolve to refused
addresses are refused (audited, counted, never served), and only API-registered MCPs connect through the
egress policy's pinned resolver. No traffic leaves the machine (tests/egress/support.py's recorder)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mcp_barbican import egress
from mcp_barbican.config import EgressConfig
from mcp_barbican.egress import Egress, EgressRefused
from mcp_barbican.exceptions import ConfigError, UpstreamUnavailable
from mcp_barbican.server.app import BarbicanApp, build_app
from mcp_barbican.upstream.streamable import StreamableHttpChannel
from tests.egress.support import STUB, StubResolver, record_connections
from tests.server.test_control import config, mcp, mock_upstreams  # noqa: F401 - a fixture

pytestmark = pytest.mark.anyio


def http_mcp(mcp_id: str, url: str) -> dict[str, Any]:
    return {"id": mcp_id, "url": url, "auth": {"type": "none"}}


@pytest.fixture
async def core() -> AsyncIterator[BarbicanApp]:
    _app, core = build_app(config(mcp("a"), http_mcp("from_file", "http://metadata.test/mcp")))
    await core.startup()
    try:
        yield core
    finally:
        await core.shutdown()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return record_connections(monkeypatch)


@pytest.fixture
def resolver() -> StubResolver:
    return StubResolver(dict(STUB))


@pytest.fixture
def stubbed(core: BarbicanApp, resolver: StubResolver) -> Iterator[Egress]:
    """The app's egress, resolving through the stub table (its refusals still reach the app)."""
    stub = Egress(EgressConfig(), resolver=resolver, on_refused=core._egress_refused)
    previous = egress.install(stub)
    yield stub
    egress.install(previous)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://metadata.test/mcp", "resolves to 169.254.169.254: a cloud metadata address"),
        ("http://linklocal.test/mcp", "resolves to fe80::1: link-local"),
        ("http://split.test/mcp", "resolves to 169.254.169.254"),
        ("http://[fd00:ec2::254]/mcp", "a cloud metadata address"),
    ],
)
async def test_a_registration_whose_url_is_refused_is_a_config_error_at_url(
    core: BarbicanApp, stubbed: Egress, connections: list[str], url: str, reason: str
) -> None:
    before = core.counters.egress_refused
    with pytest.raises(ConfigError, match="refused by the egress policy") as caught:
        await core.registry.create(http_mcp("x", url))
    assert caught.value.path == "url" and reason in str(caught.value)
    assert "x" not in core.routes
    assert await core.registry.create(http_mcp("y", "http://loopback.test/mcp")) == (201, "y")
    with pytest.raises(ConfigError, match="refused by the egress policy"):
        await core.registry.replace("y", http_mcp("y", url))
    assert core.routes["y"].mcp.url == "http://loopback.test/mcp"
    assert core.counters.egress_refused - before == 2
    assert connections == []


async def test_only_api_registered_mcps_connect_through_the_pinned_resolver(
    core: BarbicanApp, stubbed: Egress, resolver: StubResolver, connections: list[str]
) -> None:
    assert core.routes["from_file"].runtime.egress is None  # the config file's upstreams are not filtered
    assert await core.registry.create(http_mcp("api", "http://loopback.test/mcp")) == (201, "api")
    runtime = core.routes["api"].runtime
    assert runtime.egress is stubbed
    session = runtime._http_session()
    # The name now answers with a metadata address (DNS rebinding after the registration's check).
    resolver.table["loopback.test"] = ["169.254.169.254"]
    with pytest.raises(EgressRefused, match="cloud metadata"):
        await session.get("http://loopback.test/mcp")
    assert connections == []
    assert resolver.asked[-1] == "loopback.test"


async def test_a_reload_changes_the_policy_in_place(core: BarbicanApp) -> None:
    assert egress.installed() is core.egress and core.egress.policy.allow_private
    server = core.control.config.server.model_copy(update={"egress": EgressConfig(allow_private=False)})
    await core.registry.apply_file(core.control.config.model_copy(update={"server": server}))
    assert not core.egress.policy.allow_private
    with pytest.raises(ConfigError, match="allow_private is false"):
        await core.registry.create(http_mcp("x", "http://127.0.0.1:9/mcp"))


async def test_the_posts_of_an_api_mcp_connect_to_checked_addresses_only(
    core: BarbicanApp, stubbed: Egress, resolver: StubResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await core.registry.create(http_mcp("api", "http://loopback.test/mcp")) == (201, "api")
    runtime = core.routes["api"].runtime
    tried: list[object] = []

    async def recording(factory: object, host: object = None, port: object = None, **kwargs: object) -> None:
        tried.append(host)
        raise OSError("the test sends nothing")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", recording)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    answers: list[dict[str, Any]] = []
    channel = StreamableHttpChannel(  # the real channel (this module's upstreams are mocks), on the MCP's session
        lambda message, related: answers.append(message),
        lambda error: None,
        url="http://loopback.test/mcp",
        headers={},
        http=runtime._http_session(),
        start_timeout=1.0,
    )
    await channel.start()

    async def failure() -> str:
        try:
            await channel.send(ping)
        except UpstreamUnavailable as exc:
            return str(exc)
        for _ in range(100):
            if answers:
                return str(answers.pop()["error"]["message"])
            await asyncio.sleep(0.02)
        raise AssertionError(f"no answer; tried {tried}")

    await failure()
    assert tried == ["127.0.0.1"], "the POST connects to the address the policy checked, not the name"
    resolver.table["loopback.test"] = ["169.254.169.254"]  # DNS rebinding after the registration's check
    assert "cloud metadata" in await failure()
    assert tried == ["127.0.0.1"], "no connection to the refused address"
    await channel.aclose()
