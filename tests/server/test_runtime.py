"""McpRuntime: what it reads from disk, it reads before any request; over a mock upstream, it restarts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import trustme

from mcp_barbican.config import ListenerLimits, McpConfig, ProxyConfig
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server import link as link_module
from mcp_barbican.server.app import build_app, log_loop_error
from mcp_barbican.server.quota import SessionQuota
from mcp_barbican.server.runtime import McpRuntime
from mcp_barbican.upstream.mock import MockUpstream
from tests.server.test_link import INIT_PARAMS, answered, messages, server, tool_call


def test_an_upstream_ca_file_gone_after_load_fails_the_set_up_not_a_request(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    mcp = McpConfig.model_validate({"id": "remote", "url": "https://127.0.0.1:1/mcp", "tls": {"ca_file": str(ca_file)}})
    McpRuntime(mcp, idle_timeout=60, quota=SessionQuota(ListenerLimits()))  # the file is there: set up succeeds
    ca_file.unlink()
    with pytest.raises(ConfigError, match="ca_file"):
        McpRuntime(mcp, idle_timeout=60, quota=SessionQuota(ListenerLimits()))


def test_what_the_event_loop_cannot_hand_anyone_is_logged_as_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """uvloop reports a TLS transport written after its peer left through the loop's handler (seen in CI)."""
    error = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING):
            log_loop_error(loop, {"message": "Fatal error on SSL protocol", "exception": error})
    finally:
        loop.close()
    (record,) = caplog.records
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert record.getMessage() == f"Fatal error on SSL protocol: RuntimeError: {error}"


@pytest.mark.anyio
async def test_the_app_installs_it_at_start_up() -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    config = ProxyConfig.model_validate(
        {"server": {"auth": {"type": "none"}, "storage": {"type": "memory"}}, "mcps": []}
    )
    _app, core = build_app(config)
    try:
        await core.startup()
        assert loop.get_exception_handler() is log_loop_error
    finally:
        await core.shutdown()
        loop.set_exception_handler(previous)


@pytest.mark.anyio
async def test_a_shared_runtime_whose_upstream_dies_is_failed_then_ready_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "RESTART_BACKOFF", (0.01, 2.0, 0.1))
    upstream = MockUpstream(server)
    mcp = McpConfig.model_validate({"id": "mock", "command": "unused", "session_mode": "shared"})
    runtime = McpRuntime(mcp, idle_timeout=60, quota=SessionQuota(ListenerLimits()))
    monkeypatch.setattr(runtime, "_channel", upstream)  # the runtime's one way to open a channel
    runtime.start()
    try:
        assert runtime._probe_task is not None
        await asyncio.wait_for(runtime._probe_task, 1.0)
        assert runtime.status == "ready"
        session = runtime.new_session("alice", client_ip=None)
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT_PARAMS}
        await runtime.initialize(session, init, session.open_stream())
        link = session.link
        assert link is not None and link.channel is upstream.channel

        upstream.channel.fail(BrokenPipeError("the child exited"))
        assert (runtime.status, runtime.last_error) == ("failed", "the child exited")
        await asyncio.wait_for(link.wait_ready(), 1.0)
        assert runtime.status == "ready" and link.channel is upstream.channel

        stream = session.open_stream()
        await link.forward_request(session, tool_call(1, {"after": "restart"}), stream)
        await answered(stream)
        assert messages(stream) == [{"jsonrpc": "2.0", "id": 1, "result": {"echo": {"after": "restart"}}}]
    finally:
        await runtime.aclose()


class _Recorded:
    """An audit trail stand-in that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool, str | None, str | None]] = []

    def emit_soon(self, event: Any) -> None:
        self.events.append((event.action, event.success, event.mcp, event.error))


@pytest.mark.parametrize(
    ("statuses", "audited"),
    [
        (["ready", "failed"], [("upstream.down", False, "mock", "boom")]),
        (["failed"], [("upstream.down", False, "mock", "boom")]),  # failing while first connecting
        (
            ["failed", "failed", "ready"],
            [("upstream.down", False, "mock", "boom"), ("upstream.up", True, "mock", None)],
        ),
        (["ready", "ready"], []),
    ],
)
def test_an_upstream_going_down_and_coming_back_is_audited_once_each(
    statuses: list[str], audited: list[tuple[str, bool, str | None, str | None]]
) -> None:
    mcp = McpConfig.model_validate({"id": "mock", "command": "unused"})
    trail = _Recorded()
    runtime = McpRuntime(mcp, idle_timeout=60, quota=SessionQuota(ListenerLimits()), audit=trail)  # type: ignore[arg-type]
    for status in statuses:
        runtime._set_status(status, "boom" if status == "failed" else None)
    assert trail.events == audited
