"""The listener's limits in pieces: the guard's count and sweeper, the refusal, reloads that need a restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mcp_barbican.config import ListenerLimits, ProxyConfig, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server.control import ControlPlane
from mcp_barbican.server.listener import ListenerGuard, sweep_interval
from mcp_barbican.server.protocol import refusal
from mcp_barbican.server.registry import Registry
from mcp_barbican.server.shields import Shields
from mcp_barbican.storage.memory import MemoryStorage

# ---------------------------------------------------------------------------------------------
# Reload


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limits", "named"),
    [
        pytest.param({"header_timeout": "5s"}, ["server.limits.header_timeout"], id="header_timeout"),
        pytest.param(
            {"max_header_bytes": "8KiB", "max_connections": 5},
            ["server.limits.max_header_bytes", "server.limits.max_connections"],
            id="two",
        ),
        pytest.param({"max_headers": 10, "body_timeout": "1s"}, ["max_headers", "body_timeout"], id="others"),
    ],
)
async def test_a_reload_that_changes_listener_limits_needs_a_restart(limits: dict[str, Any], named: list[str]) -> None:
    def config(server_limits: dict[str, Any]) -> ProxyConfig:
        server = {"storage": {"type": "memory"}, "limits": server_limits}
        return validate_model(ProxyConfig, {"server": server, "mcps": []})

    running = config({})
    registry = Registry(ControlPlane(running, Shields(running)), MemoryStorage())
    with pytest.raises(ConfigError, match="restart to apply") as refused:
        await registry.apply_file(config(limits))
    assert all(name in str(refused.value) for name in named)


# ---------------------------------------------------------------------------------------------
# The guard's pieces


@pytest.mark.parametrize(
    ("header_timeout", "body_timeout", "interval"),
    [(10.0, 30.0, 1.0), (2.0, 30.0, 0.5), (30.0, 1.0, 0.25), (0.1, 0.1, 0.05), (600.0, 600.0, 1.0)],
)
def test_sweep_interval(header_timeout: float, body_timeout: float, interval: float) -> None:
    assert sweep_interval(ListenerLimits(header_timeout=header_timeout, body_timeout=body_timeout)) == interval


class Connection:
    def __init__(self) -> None:
        self.checked: list[float] = []

    def check_deadlines(self, now: float) -> None:
        self.checked.append(now)


@pytest.mark.anyio
async def test_the_guard_counts_per_listener_and_sweeps_only_while_connections_are_open() -> None:
    loop = asyncio.get_running_loop()
    guard = ListenerGuard(ListenerLimits(max_connections=2, header_timeout=0.2))
    first, second, third, admin = Connection(), Connection(), Connection(), Connection()
    assert guard.admit(first, 6001, loop) and guard.admit(second, 6001, loop)
    assert not guard.admit(third, 6001, loop)  # full
    assert guard.admit(admin, 6002, loop)  # another listener
    await asyncio.sleep(0.2)
    assert first.checked and second.checked and admin.checked and not third.checked
    guard.release(first, 6001)
    assert guard.admit(third, 6001, loop)
    for connection, port in ((second, 6001), (third, 6001), (admin, 6002)):
        guard.release(connection, port)
    await asyncio.sleep(0.2)
    swept = len(admin.checked)
    await asyncio.sleep(0.2)
    assert len(admin.checked) == swept  # idle: the sweeper stopped


def test_a_refusal_is_a_whole_json_answer_that_closes() -> None:
    answer = refusal(431, "header_fields_too_large", "too big")
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nconnection: close" in head_bytes and b"content-length: %d" % len(body) in head_bytes
    assert json.loads(body) == {"error": "header_fields_too_large", "message": "too big"}


class Failing(Connection):
    def check_deadlines(self, now: float) -> None:
        raise RuntimeError("broken")


@pytest.mark.anyio
async def test_one_failing_check_does_not_stop_the_sweeper(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    guard = ListenerGuard(ListenerLimits(header_timeout=0.2))
    healthy = Connection()
    assert guard.admit(Failing(), 6001, loop) and guard.admit(healthy, 6001, loop)
    await asyncio.sleep(0.3)
    assert len(healthy.checked) >= 2
    assert "checking a connection's deadlines failed: broken" in caplog.text
    assert "Traceback" not in caplog.text
