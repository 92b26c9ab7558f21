"""Stdio children never outlive what they serve: the proxy (even SIGKILLed), a shutdown, an idle session."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx2
import pytest

from mcp_barbican.upstream.process import GUARD_NAME
from tests.proxy import RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS, initialize
from tests.server.test_failures import children_of

pytestmark = pytest.mark.e2e

#: A demo server that ignores SIGTERM, with a grandchild that ignores it too and never reads stdin.
LINGERING = ["-c", 'trap "" TERM; sleep 600 & exec "$0" -m mcp_barbican.demo', sys.executable]
#: A child that ignores SIGTERM and outlives its stdin: after the demo ends, the shell sleeps on.
STUBBORN = ["-c", 'trap "" TERM; sleep 600 & "$0" -m mcp_barbican.demo; exec sleep 600', sys.executable]


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie nobody reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def survivors(pids: Iterable[int], within: float) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        left = [f"{pid}: {command_line(pid)}" for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def session_processes(proxy: RunningProxy) -> set[int]:
    """Everything below the proxy once a session is open: the child, its own child and the guard."""
    deadline = time.monotonic() + 10
    while True:
        found = descendants(proxy.process.pid)
        lines = [command_line(pid) for pid in found]
        if (any("sleep 600" in line for line in lines) and any(GUARD_NAME in line for line in lines)) or (
            time.monotonic() > deadline
        ):
            assert any(GUARD_NAME in line for line in lines), lines
            return found
        time.sleep(0.1)


def test_a_proxy_killed_with_sigkill_leaves_no_process_behind(tmp_path: Path) -> None:
    mcp = {"id": "lingering", "command": "/bin/sh", "args": LINGERING}
    with run_proxy(tmp_path, [mcp]) as proxy:
        initialize(proxy, "lingering")
        found = session_processes(proxy)
        assert any("sleep 600" in command_line(pid) for pid in found)
        os.kill(proxy.process.pid, signal.SIGKILL)  # the proxy alone, not its process group
        proxy.process.wait(10)
        assert survivors(found, within=15) == []


def test_a_child_that_ignores_sigterm_is_gone_after_a_normal_shutdown(tmp_path: Path) -> None:
    mcp = {"id": "stubborn", "command": "/bin/sh", "args": STUBBORN}
    with run_proxy(tmp_path, [mcp]) as proxy:
        initialize(proxy, "stubborn")
        found = session_processes(proxy)
        os.kill(proxy.process.pid, signal.SIGTERM)
        assert proxy.process.wait(30) == -signal.SIGTERM  # uvicorn ends by the signal it handled
        assert "Application shutdown complete" in proxy.log_text()
        assert survivors(found, within=5) == []


def test_the_child_of_an_idle_session_is_recycled(tmp_path: Path) -> None:
    mcp = {"id": "lingering", "command": "/bin/sh", "args": LINGERING}
    with run_proxy(tmp_path, [mcp], server={"session_idle_timeout": "2s"}) as proxy:
        initialize(proxy, "lingering")
        found = session_processes(proxy)
        assert survivors(found, within=20) == []  # idle 2 s, swept every second, 2 s for stdin, 2 s for SIGTERM
        assert proxy.process.poll() is None
        assert "expired after 2s idle" in proxy.log_text()


def test_an_initialize_that_gets_no_answer_is_an_error_naming_the_mcp(tmp_path: Path) -> None:
    mute = {"id": "mute", "command": "/bin/sh", "args": ["-c", "exec sleep 600"], "start_timeout": "2s"}
    with run_proxy(tmp_path, [mute, demo_mcp("demo")], wait_ready=False) as proxy:
        initialize(proxy, "demo")  # the proxy is up
        started = time.monotonic()
        response = httpx2.post(proxy.url("mute"), headers=MCP_HEADERS, json=INIT, timeout=30)
        assert time.monotonic() - started < 15
        assert response.status_code == 502, response.text
        assert "mcp-session-id" not in response.headers
        error = response.json()["error"]
        assert error["message"] == "upstream 'mute' did not answer initialize within 2s (start_timeout)"
        assert response.json()["id"] == INIT["id"]
        time.sleep(0.5)
        assert "upstream 'mute' did not answer initialize within 2s (start_timeout)" in proxy.log_text()
