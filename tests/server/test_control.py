"""The control plane in-process: the table of served MCPs and the live config change only as a whole.

The MCPs are stdio definitions whose runtimes open mock channels (no process starts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from mcp_barbican.config import ProxyConfig
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.jsonrpc import Message
from mcp_barbican.security.auth import AuthFailure
from mcp_barbican.security.jwt import JwtVerifier
from mcp_barbican.server.app import BarbicanApp, build_app
from mcp_barbican.server.runtime import McpRuntime
from mcp_barbican.storage import McpRecord
from mcp_barbican.types import ASGIApp
from mcp_barbican.upstream.base import CloseHandler, MessageHandler, UpstreamChannel
from mcp_barbican.upstream.mock import MockUpstream

pytestmark = pytest.mark.anyio

OLD_ADMIN = "old-admin-token-0123456789abcdef"
NEW_ADMIN = "new-admin-token-0123456789abcdef"
DEFAULT_CSP = b"default-src 'none'; frame-ancestors 'none'"
JWT = {"type": "jwt", "jwt": {"secret": "s" * 32, "algorithms": ["HS256"], "audience": "barbican"}}


def upstream(message: Message) -> list[Message]:
    if message.get("method") == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "mock"}}
        return [{"jsonrpc": "2.0", "id": message["id"], "result": result}]
    if message.get("method") == "tools/list":
        return [{"jsonrpc": "2.0", "id": message["id"], "result": {"tools": [{"name": "echo"}]}}]
    return []


@pytest.fixture(autouse=True)
def mock_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    mock = MockUpstream(upstream)

    def channel(self: McpRuntime, on_message: MessageHandler, on_close: CloseHandler) -> UpstreamChannel:
        return mock(on_message, on_close)

    monkeypatch.setattr(McpRuntime, "_channel", channel)


def mcp(mcp_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": mcp_id, "command": "unused", **fields}


def config(*mcps: dict[str, Any], admin: str = OLD_ADMIN, **limits: Any) -> ProxyConfig:
    server = {"auth": {"type": "none"}, "storage": {"type": "memory"}, "admin": {"token": admin}, "limits": limits}
    return ProxyConfig.model_validate({"server": server, "mcps": list(mcps)})


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ASGIApp, BarbicanApp]]:
    app, core = build_app(config(mcp("a"), mcp("b", security={"headers": {"csp": "b-old"}})))
    await core.startup()
    try:
        yield app, core
    finally:
        await core.shutdown()


def consistent(core: BarbicanApp) -> set[str]:
    """The ids served, after checking that table, sources, runtimes and config agree on them."""
    control = core.control
    served = set(control.routes)
    assert set(control.sources) == served
    assert set(control.runtimes) == served
    assert {m.id for m in control.config.mcps} == served
    assert core.shields.config is control.config
    for mcp_id, route in control.routes.items():
        assert route.mcp == control.config.mcp(mcp_id)
        assert control.runtimes[mcp_id] is route.runtime
    return served


async def request(app: ASGIApp, path: str, token: str | None = None) -> tuple[int, dict[bytes, bytes]]:
    headers = [(b"host", b"127.0.0.1")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "scheme": "http",
        "http_version": "1.1",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


def slow_storage(core: BarbicanApp, delay: float = 0.02) -> None:
    """Storage writes that yield to the loop, so concurrent changes would interleave without the lock."""
    table = core.storage.mcps
    for name in ("create", "replace", "delete"):
        write = getattr(table, name)

        async def slow(*args: Any, _write: Any = write) -> Any:
            await asyncio.sleep(delay)
            return await _write(*args)

        setattr(table, name, slow)


# ---------------------------------------------------------------------------------------------
# One MCP's change leaves the others alone


async def test_serve_swap_and_drop_leave_other_routes_untouched(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    _app, core = proxy
    routes = core.routes
    a, b = routes["a"], routes["b"]
    assert await core.registry.create(mcp("c")) == (201, "c")
    assert consistent(core) == {"a", "b", "c"}
    assert routes["a"] is a and routes["b"] is b and core.control.source("c") == "api"
    first = routes["c"]

    assert await core.registry.replace("c", mcp("c", request_timeout=5)) == (200, "c")
    assert consistent(core) == {"a", "b", "c"}
    assert routes["a"] is a and routes["b"] is b and routes["c"] is not first
    assert routes["c"].mcp.request_timeout == 5 and core.control.source("c") == "api"
    assert first.runtime._closing and not a.runtime._closing

    replaced = routes["c"]
    assert await core.registry.delete("c") == (204, "c")
    assert consistent(core) == {"a", "b"}
    assert routes["a"] is a and routes["b"] is b and replaced.runtime._closing
    assert await core.storage.mcps.list() == []


async def test_the_router_reads_the_control_planes_table(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    app, core = proxy
    assert core.routes is core.control.routes
    assert (await request(app, "/mcp/c"))[0] == 404
    await core.registry.create(mcp("c"))
    assert (await request(app, "/mcp/c"))[0] == 406  # the endpoint answers: the request has no Accept header
    await core.registry.delete("c")
    assert (await request(app, "/mcp/c"))[0] == 404


# ---------------------------------------------------------------------------------------------
# Concurrent changes are serialized


async def test_racing_swap_and_drop_of_one_id_end_consistent(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    _app, core = proxy
    await core.registry.create(mcp("c"))
    slow_storage(core)
    first = core.routes["c"]
    swapped, dropped = await asyncio.gather(
        core.registry.replace("c", mcp("c", request_timeout=5)), core.registry.delete("c")
    )
    assert swapped == (200, "c") and dropped == (204, "c")  # the lock let the swap finish first
    assert consistent(core) == {"a", "b"}
    assert await core.storage.mcps.list() == []
    assert first.runtime._closing


async def test_racing_drop_and_swap_of_one_id_end_consistent(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    _app, core = proxy
    await core.registry.create(mcp("c"))
    slow_storage(core)
    dropped, swapped = await asyncio.gather(
        core.registry.delete("c"), core.registry.replace("c", mcp("c", request_timeout=5))
    )
    assert dropped == (204, "c") and swapped == (404, "no MCP with id 'c'")
    assert consistent(core) == {"a", "b"}
    assert await core.storage.mcps.list() == []


async def test_concurrent_registrations_both_land_in_table_and_config(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    _app, core = proxy
    slow_storage(core)
    created = await asyncio.gather(*(core.registry.create(mcp(name)) for name in ("c", "d", "e")))
    assert created == [(201, "c"), (201, "d"), (201, "e")]
    assert consistent(core) == {"a", "b", "c", "d", "e"}
    assert sorted(record.id for record in await core.storage.mcps.list()) == ["c", "d", "e"]


async def test_a_reload_racing_a_registration_keeps_both(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    _app, core = proxy
    slow_storage(core)
    new = config(mcp("a"), mcp("b", security={"headers": {"csp": "b-old"}}), mcp("f"))
    created, changes = await asyncio.gather(core.registry.create(mcp("c")), core.registry.apply_file(new))
    assert created == (201, "c") and changes == ["added f"]
    assert consistent(core) == {"a", "b", "c", "f"}
    assert core.control.source("c") == "api" and core.control.source("f") == "config"


# ---------------------------------------------------------------------------------------------
# A failed change changes nothing


@pytest.mark.parametrize("failure", [ConfigError("the key cannot be loaded"), RuntimeError("no keys")])
async def test_a_registration_whose_verifier_fails_to_start_changes_nothing(
    proxy: tuple[ASGIApp, BarbicanApp], monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    _app, core = proxy
    before = (dict(core.routes), core.control.config, list(core.shields.verifiers))
    closed: list[JwtVerifier] = []

    async def fail(self: JwtVerifier) -> None:
        raise failure

    async def aclose(self: JwtVerifier) -> None:
        closed.append(self)

    monkeypatch.setattr(JwtVerifier, "start", fail)
    monkeypatch.setattr(JwtVerifier, "aclose", aclose)
    with pytest.raises(type(failure)):
        await core.registry.create(mcp("c", auth=JWT))
    assert (dict(core.routes), core.control.config, core.shields.verifiers) == before
    assert consistent(core) == {"a", "b"}
    assert await core.storage.mcps.list() == []  # nothing stored either
    assert len(closed) == 1


async def test_a_reload_whose_verifier_fails_to_start_changes_nothing(
    proxy: tuple[ASGIApp, BarbicanApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, core = proxy
    before = (dict(core.routes), core.control.config, core.admin)

    async def fail(self: JwtVerifier) -> None:
        raise ConfigError("the key cannot be loaded")

    monkeypatch.setattr(JwtVerifier, "start", fail)
    new = config(mcp("a", request_timeout=5), mcp("c", auth=JWT), admin=NEW_ADMIN, max_sessions_per_principal=3)
    with pytest.raises(ConfigError, match="the key cannot be loaded"):
        await core.registry.apply_file(new)
    assert (dict(core.routes), core.control.config, core.admin) == before
    assert consistent(core) == {"a", "b"}
    assert core.shields.sessions.cap == 20
    assert (await request(app, "/admin/mcps", OLD_ADMIN))[0] == 200


async def test_a_registration_the_store_refuses_is_not_served(
    proxy: tuple[ASGIApp, BarbicanApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    _app, core = proxy

    async def taken(record: McpRecord) -> bool:  # another replica stored the id first; its notice is on its way
        return False

    monkeypatch.setattr(core.storage.mcps, "create", taken)
    routes = dict(core.routes)
    assert await core.registry.create(mcp("c")) == (409, "an MCP with id 'c' exists")
    assert core.routes == routes and consistent(core) == {"a", "b"}


# ---------------------------------------------------------------------------------------------
# A reload updates everything derived from the config


async def test_a_reload_updates_what_derives_from_the_config(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    app, core = proxy
    a = core.routes["a"]
    assert (await request(app, "/admin/mcps", OLD_ADMIN))[0] == 200
    assert (await request(app, "/mcp/b/x"))[1][b"content-security-policy"] == b"b-old"

    b_new = mcp("b", security={"headers": {"csp": "b-new"}})
    new = config(mcp("a"), b_new, admin=NEW_ADMIN, max_sessions_per_principal=3)
    assert await core.registry.apply_file(new) == ["replaced b"]
    assert consistent(core) == {"a", "b"} and core.routes["a"] is a
    assert core.control.config.server == new.server
    assert (await request(app, "/admin/mcps", NEW_ADMIN))[0] == 200
    assert (await request(app, "/admin/mcps", OLD_ADMIN))[0] == 401
    assert core.shields.sessions.cap == 3
    assert (await request(app, "/mcp/b/x"))[1][b"content-security-policy"] == b"b-new"
    assert (await request(app, "/mcp/a/x"))[1][b"content-security-policy"] == DEFAULT_CSP


async def test_a_registered_mcp_gets_its_headers_and_loses_them_when_deleted(
    proxy: tuple[ASGIApp, BarbicanApp],
) -> None:
    app, core = proxy
    await core.registry.create(mcp("c", security={"headers": {"csp": "c-own"}}))
    assert (await request(app, "/mcp/c/x"))[1][b"content-security-policy"] == b"c-own"
    await core.registry.delete("c")
    assert (await request(app, "/mcp/c/x"))[1][b"content-security-policy"] != b"c-own"


# ---------------------------------------------------------------------------------------------
# What the admin API reads


async def test_the_admin_view_reads_runtimes_and_sources(proxy: tuple[ASGIApp, BarbicanApp]) -> None:
    _app, core = proxy
    await core.registry.create(mcp("c"))
    control = core.control
    assert list(control.runtimes) == ["a", "b", "c"]
    assert [control.source(i) for i in ("a", "c", "z")] == ["config", "api", None]
    runtime = control.runtimes["c"]
    await asyncio.wait_for(runtime._probe_task, 1.0)  # type: ignore[arg-type]
    assert runtime.status == "ready"
    assert await runtime.list_tools() == [{"name": "echo"}]


async def test_the_mcp_list_answers_while_a_registration_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The list awaits each MCP's verdict; the table it walks may change meanwhile."""
    app, core = build_app(config(mcp("a", auth=JWT), mcp("b")))
    await core.startup()
    checking = asyncio.Event()
    go_on = asyncio.Event()

    async def authenticate(self: JwtVerifier, credential: str) -> AuthFailure:
        checking.set()
        await go_on.wait()
        return AuthFailure("not today")

    monkeypatch.setattr(JwtVerifier, "authenticate", authenticate)
    try:
        listing = asyncio.create_task(request(app, "/api/v1/mcp/list", "some-jwt"))
        await checking.wait()
        assert await core.registry.create(mcp("c")) == (201, "c")
        go_on.set()
        status, _ = await listing
        assert status == 200  # b and c need no credential
    finally:
        await core.shutdown()
