"""Upstream failures: a dead child restarts, a broken upstream is reported and isolated."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from mcp_barbican.upstream.process import GUARD_NAME
from tests.proxy import AUTH_HEADER, demo_mcp, mcp_client, run_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def children_of(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def stdio_children_of(pid: int) -> list[int]:
    """The MCP servers a proxy runs, without the guard beside each (upstream.process)."""
    return [
        child for child in children_of(pid) if GUARD_NAME.encode() not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


ADMIN_TOKEN = "readiness-admin-token-0123456789"
ADMIN = {"admin": {"token": ADMIN_TOKEN}}


def poll_readyz(base: str, done: Callable[[dict[str, Any]], bool], timeout: float = 20) -> httpx2.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx2.get(f"{base}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        if done(response.json()) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


async def test_a_killed_child_fails_the_call_and_the_next_call_works(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")]) as proxy:
        async with mcp_client(proxy.url("demo")) as client:
            await client.call_tool("echo", {"message": "warm"})
            [child] = stdio_children_of(proxy.process.pid)

            async def kill_soon() -> None:
                await anyio.sleep(0.5)
                os.kill(child, signal.SIGKILL)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as group:
                    group.start_soon(kill_soon)
                    with pytest.raises(MCPError, match="went away"):
                        await client.call_tool("slow", {"seconds": 5, "steps": 5})
                result = None
                while result is None:
                    try:
                        result = await client.call_tool("echo", {"message": "again"})
                    except MCPError:
                        await anyio.sleep(0.2)
            assert result.content[0].text == "again"  # type: ignore[union-attr]
            assert stdio_children_of(proxy.process.pid) != [child]


async def test_an_upstream_that_never_starts_is_reported_and_does_not_disturb_others(tmp_path: Path) -> None:
    broken = {"id": "broken", "command": "/nonexistent/mcp-server", "start_timeout": "2s"}
    with run_proxy(tmp_path, [broken, demo_mcp("demo")], server=ADMIN, wait_ready=False) as proxy:
        ready = poll_readyz(proxy.base, lambda body: body.get("not_ready") == [{"id": "broken", "status": "failed"}])
        assert ready.status_code == 503
        # Names only to an admin credential: anyone else learns only that something is not ready.
        anonymous = httpx2.get(f"{proxy.base}/readyz")
        assert (anonymous.status_code, anonymous.json()) == (503, {"status": "not ready"})
        for wrong in (AUTH_HEADER, {"Authorization": "Bearer not-the-admin-token"}):
            refused = httpx2.get(f"{proxy.base}/readyz", headers=wrong)
            assert refused.status_code == 401 and "broken" not in refused.text
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        response = httpx2.post(
            proxy.url("broken"),
            headers={**AUTH_HEADER, "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": init},
        )
        assert response.status_code == 502
        assert response.json()["id"] == 7
        assert "unavailable" in response.json()["error"]["message"]
        async with mcp_client(proxy.url("demo")) as client:
            result = await client.call_tool("echo", {"message": "still here"})
        assert result.content[0].text == "still here"  # type: ignore[union-attr]


async def test_the_child_gets_only_its_configured_environment(tmp_path: Path) -> None:
    mcp = demo_mcp("demo", env={"DEMO_SETTING": "on"})
    secret_env = {"PROXY_SECRET_TOKEN": "do-not-leak", "AWS_SECRET_ACCESS_KEY": "nope"}
    with run_proxy(tmp_path, [mcp], env=secret_env) as proxy:
        async with mcp_client(proxy.url("demo")) as client:
            result = await client.call_tool("whoami", {})
    names = set(result.content[0].text.split())  # type: ignore[union-attr]
    assert "DEMO_SETTING" in names and "PATH" in names
    assert not names & set(secret_env)
    assert names <= {
        "DEMO_SETTING",
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TERM",
        "TZ",
        "TMPDIR",
        "USER",
        "LOGNAME",
    }, names
