"""The registry follows the store's `mcps` table: what another replica stores is served here, once.

In-process, on the memory store (whose notices are told as a shared store tells another
replica's writes), with mock upstreams; tests/storage/test_redis_registry.py runs two replicas
on a real Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mcp_barbican.admin.control import Source
from mcp_barbican.config import McpConfig
from mcp_barbican.server.app import BarbicanApp, build_app
from mcp_barbican.server.registry import Step, decide
from mcp_barbican.server.runtime import McpRuntime
from mcp_barbican.storage import McpRecord
from mcp_barbican.upstream.base import CloseHandler, MessageHandler, UpstreamChannel
from mcp_barbican.upstream.mock import MockUpstream
from tests.server.test_control import config, consistent, mcp, upstream

pytestmark = pytest.mark.anyio

REGISTRY_LOG = "mcp_barbican.server.registry"


def model(mcp_id: str, **fields: Any) -> McpConfig:
    return McpConfig.model_validate(mcp(mcp_id, **fields))


X = model("x")
X_AGAIN = model("x")
X_CHANGED = model("x", description="v2")


@pytest.mark.parametrize(
    ("source", "served", "wanted", "step"),
    [
        pytest.param(None, None, X, "serve", id="new"),
        pytest.param("api", X, X_AGAIN, "nothing", id="same"),
        pytest.param("api", X, X_CHANGED, "swap", id="changed"),
        pytest.param("api", X, None, "drop", id="removed"),
        pytest.param(None, None, None, "nothing", id="removed-not-served"),
        pytest.param("config", X, X_CHANGED, "config", id="config-owned"),
        pytest.param("config", X, X_AGAIN, "config", id="config-owned-same-definition"),
        pytest.param("config", X, None, "nothing", id="config-owned-removed"),
    ],
)
def test_decide(source: Source | None, served: McpConfig | None, wanted: McpConfig | None, step: Step) -> None:
    assert decide(source, served, wanted) == step


# ---------------------------------------------------------------------------------------------
# Following the store in-process


@pytest.fixture(autouse=True)
def mock_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    mock = MockUpstream(upstream)

    def channel(self: McpRuntime, on_message: MessageHandler, on_close: CloseHandler) -> UpstreamChannel:
        return mock(on_message, on_close)

    monkeypatch.setattr(McpRuntime, "_channel", channel)


@pytest.fixture
async def core() -> AsyncIterator[BarbicanApp]:
    _app, core = build_app(config(mcp("a")))
    await core.startup()
    try:
        yield core
    finally:
        await core.shutdown()


async def idle(core: BarbicanApp) -> None:
    """Wait until the registry has applied every change the store told it (at most a second)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        if not core.registry._pending and not core.control._lock.locked():
            return
    raise AssertionError("the registry did not apply the store's changes within a second")


def record(mcp_id: str, **fields: Any) -> McpRecord:
    return McpRecord(mcp_id, mcp(mcp_id, **fields), 1.0, 1.0)


def announced(core: BarbicanApp) -> list[int]:
    calls: list[int] = []
    core.control.on_routes_change.append(lambda: calls.append(1))
    return calls


async def test_another_replicas_registration_update_and_removal_apply_here(core: BarbicanApp) -> None:
    a = core.routes["a"]
    changes = announced(core)
    await core.storage.mcps.put(record("x"))
    await idle(core)
    assert consistent(core) == {"a", "x"} and core.control.source("x") == "api"
    first = core.routes["x"]
    assert len(changes) == 1, "aggregated sessions hear of the new MCP"

    await core.storage.mcps.put(record("x"))  # told again (a catch-up): the same definition restarts nothing
    await idle(core)
    assert core.routes["x"] is first and not first.runtime._closing and len(changes) == 1

    await core.storage.mcps.put(record("x", description="v2"))
    await idle(core)
    assert core.routes["x"] is not first and first.runtime._closing
    assert core.routes["x"].mcp.description == "v2" and consistent(core) == {"a", "x"}
    assert len(changes) == 2

    await core.storage.mcps.delete("x")
    await idle(core)
    assert consistent(core) == {"a"} and len(changes) == 3
    assert core.routes["a"] is a and not a.runtime._closing


async def test_a_local_change_is_not_applied_again_by_its_echo(core: BarbicanApp) -> None:
    changes = announced(core)
    assert await core.registry.create(mcp("x")) == (201, "x")
    served = core.routes["x"]
    await idle(core)
    assert core.routes["x"] is served and not served.runtime._closing
    assert await core.registry.replace("x", mcp("x", description="v2")) == (200, "x")
    replaced = core.routes["x"]
    await idle(core)
    assert core.routes["x"] is replaced and not replaced.runtime._closing
    assert await core.registry.delete("x") == (204, "x")
    await idle(core)
    assert consistent(core) == {"a"}
    assert len(changes) == 3, "one announcement per change, none for its echo"


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        pytest.param(McpRecord("bad", ["not", "an", "object"], 1.0, 1.0), "not an object", id="not-an-object"),  # type: ignore[arg-type]
        pytest.param(McpRecord("bad", mcp("other"), 1.0, 1.0), "names another id", id="another-id"),
        pytest.param(record("bad", request_timeout="soon"), "request_timeout", id="invalid-field"),
        pytest.param(McpRecord("bad", {"id": "bad"}, 1.0, 1.0), "url: required", id="neither-command-nor-url"),
        pytest.param(
            McpRecord("bad", {"id": "bad", "command": "x", "surprise": 1}, 1.0, 1.0), "surprise", id="unknown"
        ),
        pytest.param(
            McpRecord("bad", {"id": "bad", "url": "http://0xA9FEA9FE/mcp", "auth": {"type": "none"}}, 1.0, 1.0),
            "url: http://0xa9fea9fe/mcp: refused by the egress policy (a cloud metadata address)",
            id="egress-refused-literal",
        ),
    ],
)
async def test_a_bogus_stored_registration_is_refused_in_one_line(
    core: BarbicanApp, caplog: pytest.LogCaptureFixture, stored: McpRecord, reason: str
) -> None:
    await core.storage.mcps.put(record("good"))
    with caplog.at_level(logging.INFO, logger=REGISTRY_LOG):
        await core.storage.mcps.put(stored)
        await idle(core)
        await core.storage.mcps.put(stored)  # told again (a catch-up): not logged again
        await idle(core)
    refusals = [r for r in caplog.records if r.name == REGISTRY_LOG and r.levelno >= logging.WARNING]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    line = refusals[0].getMessage()
    assert "'bad' is not served" in line and reason in line and "\n" not in line
    assert consistent(core) == {"a", "good"}


async def test_a_refused_change_to_a_served_registration_keeps_what_is_served(
    core: BarbicanApp, caplog: pytest.LogCaptureFixture
) -> None:
    await core.storage.mcps.put(record("x", description="v1"))
    await idle(core)
    served = core.routes["x"]
    with caplog.at_level(logging.WARNING, logger=REGISTRY_LOG):
        await core.storage.mcps.put(record("x", request_timeout="soon"))
        await idle(core)
    assert core.routes["x"] is served and not served.runtime._closing
    (line,) = [r.getMessage() for r in caplog.records if r.name == REGISTRY_LOG]
    assert line.startswith("registered MCP 'x' is served unchanged: its stored change is refused (")
    assert "request_timeout" in line
    await core.storage.mcps.put(record("x", description="v3"))  # a good change after it applies
    await idle(core)
    assert core.routes["x"].mcp.description == "v3"


async def test_a_stored_registration_under_a_config_id_leaves_the_config_mcp_alone(
    core: BarbicanApp, caplog: pytest.LogCaptureFixture
) -> None:
    a = core.routes["a"]
    with caplog.at_level(logging.WARNING, logger=REGISTRY_LOG):
        await core.storage.mcps.put(record("a", description="registered"))
        await idle(core)
        await core.storage.mcps.delete("a")
        await idle(core)
    assert core.routes["a"] is a and not a.runtime._closing and core.control.source("a") == "config"
    assert [r.getMessage() for r in caplog.records if r.name == REGISTRY_LOG] == [
        "registered MCP 'a' is not served: the config file defines that id"
    ]


async def test_stdio_registrations_stored_elsewhere_are_refused_where_stdio_is_disabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = config(mcp("a"))
    admin = base.server.admin.model_copy(update={"allow_stdio": False})
    _app, core = build_app(base.model_copy(update={"server": base.server.model_copy(update={"admin": admin})}))
    await core.storage.mcps.put(record("x"))  # stored before start-up: checked the same way
    with caplog.at_level(logging.WARNING, logger=REGISTRY_LOG):
        await core.startup()
    try:
        assert consistent(core) == {"a"}
        assert "'x' is not served: stdio registrations start processes" in caplog.text
    finally:
        await core.shutdown()


async def test_stored_registrations_are_served_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    _app, core = build_app(config(mcp("a")))
    for stored in (record("x"), record("y"), record("a")):
        await core.storage.mcps.put(stored)
    with caplog.at_level(logging.WARNING, logger=REGISTRY_LOG):
        await core.startup()
    try:
        assert consistent(core) == {"a", "x", "y"}  # before start-up returns
        assert core.control.source("a") == "config"
        assert "registered MCP 'a' is not served: the config file defines that id" in caplog.text
    finally:
        await core.shutdown()


async def test_a_replace_of_what_another_replica_removed_is_a_404(
    core: BarbicanApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await core.registry.create(mcp("x")) == (201, "x")
    await idle(core)
    served = core.routes["x"]

    async def gone(stored: McpRecord) -> bool:  # removed by another replica; its notice is on its way
        return False

    monkeypatch.setattr(core.storage.mcps, "replace", gone)
    assert await core.registry.replace("x", mcp("x", description="v2")) == (404, "no MCP with id 'x'")
    assert core.routes["x"] is served and not served.runtime._closing
