"""McpRuntime set-up: what it reads from disk, it reads before any request."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import trustme

from mcp_barbican.config import ListenerLimits, McpConfig, ProxyConfig
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server.app import build_app, log_loop_error
from mcp_barbican.server.quota import SessionQuota
from mcp_barbican.server.runtime import McpRuntime


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
