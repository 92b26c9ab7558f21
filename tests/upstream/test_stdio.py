"""stdio upstreams: the child's environment, start failures, framing and shutdown."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from mcp_barbican.exceptions import UpstreamClosed, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.upstream.stdio import StdioChannel, child_environment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@pytest.mark.parametrize(
    ("parent", "configured", "expected"),
    [
        pytest.param({"PATH": "/bin", "AWS_SECRET": "x"}, {}, {"PATH": "/bin"}, id="secrets-stay-home"),
        pytest.param(
            {"HOME": "/root", "LANG": "C"},
            {"API_KEY": "k"},
            {"HOME": "/root", "LANG": "C", "API_KEY": "k"},
            id="configured-added",
        ),
        pytest.param({"PATH": "/bin"}, {"PATH": "/opt/bin"}, {"PATH": "/opt/bin"}, id="configured-wins"),
        pytest.param({"MCP_AUTH_TOKEN": "t", "PYTHONPATH": "/x"}, {}, {}, id="proxy-token-never"),
    ],
)
def test_the_child_environment_is_the_allowlist_plus_the_config(
    parent: dict[str, str], configured: dict[str, str], expected: dict[str, str]
) -> None:
    assert child_environment(configured, parent) == expected


async def test_a_missing_command_is_unavailable() -> None:
    channel = StdioChannel(lambda m, r: None, lambda e: None, command="/nonexistent/server")
    with pytest.raises(UpstreamUnavailable, match="cannot start"):
        await channel.start()
    assert channel.closed


ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line); sys.stdout.flush()\n"


async def test_messages_are_framed_by_lines_and_exit_is_reported_once() -> None:
    received: list[Message] = []
    closed: list[BaseException | None] = []
    done = asyncio.Event()

    def on_message(message: Message, related: RequestId | None) -> None:
        received.append(message)
        if len(received) == 2:
            done.set()

    channel = StdioChannel(on_message, closed.append, command=sys.executable, args=["-c", ECHO])
    await channel.start()
    await channel.send({"jsonrpc": "2.0", "method": "a", "params": {"text": "line\nbreak"}})
    await channel.send({"jsonrpc": "2.0", "id": 1, "result": {}})
    await asyncio.wait_for(done.wait(), 5)
    assert received[0]["params"]["text"] == "line\nbreak"  # an embedded newline is escaped, never raw
    await channel.aclose()
    assert closed == []  # aclose() never reports
    with pytest.raises(UpstreamClosed):
        await channel.send({"jsonrpc": "2.0", "method": "late"})


async def test_a_child_that_exits_is_reported() -> None:
    closed = asyncio.Event()
    errors: list[BaseException | None] = []

    def on_close(error: BaseException | None) -> None:
        errors.append(error)
        closed.set()

    channel = StdioChannel(lambda m, r: None, on_close, command=sys.executable, args=["-c", "raise SystemExit(3)"])
    await channel.start()
    await asyncio.wait_for(closed.wait(), 10)
    assert len(errors) == 1 and "code 3" in str(errors[0])
    assert channel.closed


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def gone(pid: int, within: float) -> bool:
    for _ in range(int(within / 0.05)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not alive(pid)


#: A server that exits when its stdin closes but leaves a child of its own behind.
LEAVES_A_CHILD = 'import subprocess, sys\nsubprocess.Popen(["sleep", "600"])\nprint(flush=True)\nsys.stdin.read()\n'


async def test_the_child_runs_in_its_own_group_beside_its_guard_and_leaves_nothing_behind() -> None:
    channel = StdioChannel(lambda m, r: None, lambda e: None, command=sys.executable, args=["-c", LEAVES_A_CHILD])
    await channel.start()
    proc = channel._proc
    assert proc is not None and proc.guard is not None
    assert os.getpgid(proc.pid) == proc.pid != os.getpgrp()
    assert os.getpgid(proc.guard.pid) == proc.pid
    await asyncio.sleep(0.5)  # the grandchild is started
    [grandchild] = [pid for pid in _group_members(proc.pid) if pid not in (proc.pid, proc.guard.pid)]
    await channel.aclose()
    assert await gone(grandchild, 5) and await gone(proc.guard.pid, 5)


async def test_the_guard_ends_the_group_when_the_proxy_side_of_its_pipe_closes() -> None:
    channel = StdioChannel(
        lambda m, r: None, lambda e: None, command="/bin/sh", args=["-c", "trap '' TERM; sleep 600 & exec sleep 600"]
    )
    await channel.start()
    proc = channel._proc
    assert proc is not None and proc.guard is not None and proc._lifeline is not None
    await asyncio.sleep(0.3)
    members = _group_members(proc.pid)
    assert len(members) == 3  # the shell's exec'd sleep, its background sleep, the guard
    os.close(proc._lifeline)  # what the kernel does when the proxy dies
    proc._lifeline = None
    for pid in members:
        assert await gone(pid, 10), pid
    await channel.aclose()


def _group_members(group: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


async def test_a_spawn_is_logged_with_its_command_line_and_variable_names_never_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"
    channel = StdioChannel(
        lambda m, r: None,
        lambda e: None,
        command=sys.executable,
        args=["-c", ECHO, "two words"],
        env={"SERVICE_API_KEY": secret},
        name="spawned",
    )
    with caplog.at_level("INFO", logger="mcp_barbican.upstream.stdio"):
        await channel.start()
    await channel.aclose()
    started = [record.getMessage() for record in caplog.records if "started pid" in record.getMessage()]
    assert len(started) == 1 and caplog.records[0].levelname == "INFO"
    assert f"{sys.executable} -c '{ECHO}' 'two words'" in started[0]
    assert "SERVICE_API_KEY" in started[0] and "PATH" in started[0]
    assert secret not in caplog.text
