"""Test helpers: run a real mcp-barbican process and talk MCP to it (a helper module, not tests).

The proxy runs as `python -m mcp_barbican serve -c FILE` in its own process, exactly as a
user runs it; tests reach it over loopback with real clients.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx2
import yaml
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
NODE_MODULES: Final = REPO_ROOT / "tests" / "node" / "node_modules"
NODE: Final = NODE_MODULES / ".bin" / "node"
EVERYTHING: Final = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK_PRELOAD: Final = REPO_ROOT / "tests" / "fixtures" / "listen_loopback.cjs"
TOKEN: Final = "test-token-0123456789abcdef"
AUTH_HEADER: Final = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT: Final = 30.0
TRACEBACK: Final = "Traceback (most recent call last)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_mcp(mcp_id: str = "demo", **extra: Any) -> dict[str, Any]:
    return {"id": mcp_id, "command": sys.executable, "args": ["-m", "mcp_barbican.demo"], **extra}


def everything_stdio(mcp_id: str = "everything", **extra: Any) -> dict[str, Any]:
    return {"id": mcp_id, "command": str(NODE), "args": [str(EVERYTHING), "stdio"], **extra}


@contextlib.contextmanager
def run_everything_http(mode: str) -> Iterator[str]:
    """server-everything in `sse` or `streamableHttp` mode on a free loopback port; yields its URL."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "PORT": str(port)}
    args = [str(NODE), "--require", str(LOOPBACK_PRELOAD), str(EVERYTHING), mode]
    with _process(args, env, port, tag=f"everything-{mode}"):
        yield f"http://127.0.0.1:{port}/sse" if mode == "sse" else f"http://127.0.0.1:{port}/mcp"


@dataclass
class RunningProxy:
    base: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, mcp_id: str, suffix: str = "") -> str:
        return f"{self.base}/mcp/{mcp_id}{suffix}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(directory: Path, config: Mapping[str, Any]) -> Path:
    path = directory / "mcp-barbican.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    return path


@contextlib.contextmanager
def run_proxy(
    directory: Path,
    mcps: list[dict[str, Any]],
    *,
    server: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    auth: Mapping[str, Any] | None = None,
    workers: int = 1,
    args: Sequence[str] = (),
) -> Iterator[RunningProxy]:
    """Start mcp-barbican with these MCPs (token auth with TOKEN unless `auth` says otherwise).

    `workers` > 1 runs `serve --workers N` (a supervisor and N worker processes; it needs Redis storage).
    `args`: more `serve` options (`--log-format json`, say).
    """
    port = free_port()
    server_block = {"host": "127.0.0.1", "port": port, **(server or {})}
    port = int(server_block["port"])  # a test that must know it first (server.public_url) picks its own
    server_block.setdefault("auth", dict(auth) if auth is not None else {"type": "token", "token": TOKEN})
    # Tests send many bad credentials from 127.0.0.1 on purpose; the ban tests turn bans back on.
    server_block.setdefault("security", {"auth_failure_ban": {"enabled": False}})
    path = write_config(directory, {"server": server_block, "mcps": mcps})
    child_env = {**os.environ, **(env or {})}
    argv = [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(path), *args]
    if workers != 1:
        argv += ["--workers", str(workers)]
    with _process(argv, child_env, port, tag="proxy", cwd=directory) as (process, log):
        proxy = RunningProxy(f"http://127.0.0.1:{port}", port, log, process)
        if wait_ready:
            _wait_ready(proxy)
            if workers > 1:
                wait_for_log(proxy, f"{workers} workers serving")
        yield proxy


def _wait_ready(proxy: RunningProxy) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{proxy.base}/readyz", timeout=2).status_code == 200:
                return
        if proxy.process.poll() is not None:
            raise RuntimeError(f"mcp-barbican exited early:\n{proxy.log_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"mcp-barbican did not become ready:\n{proxy.log_text()}")


def wait_for_log(proxy: RunningProxy, text: str, *, timeout: float = START_TIMEOUT) -> str:
    """The proxy's log once it holds `text` (a RuntimeError with the log if it does not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while (log := proxy.log_text()).count(text) == 0:
        if time.monotonic() > deadline or proxy.process.poll() is not None:
            raise RuntimeError(f"the log never said {text!r}:\n{log}")
        time.sleep(0.05)
    return log


@contextlib.contextmanager
def _process(
    args: list[str], env: Mapping[str, str], port: int, *, tag: str, cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log_dir = Path(os.environ.get("MCP_BARBICAN_TEST_LOGS", "/tmp/mcp-barbican-test-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{tag}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(args, env=dict(env), cwd=cwd, stdout=sink, stderr=sink, start_new_session=True)
    try:
        _wait_port(port, process, log)
        yield process, log
    except BaseException as exc:
        _stop(process)
        if traceback := traceback_in(log):
            exc.add_note(traceback)
        raise
    _stop(process)
    traceback = traceback_in(log)
    assert traceback is None, traceback


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def traceback_in(log: Path) -> str | None:
    """A complaint naming `log` when the process wrote a Python traceback there: none may reach a log."""
    text = log.read_text(errors="replace")
    start = text.find(TRACEBACK)
    if start < 0:
        return None
    return f"{log} holds a traceback (none may reach a user or the log):\n{text[start : start + 4000]}"


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited early:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}:\n{log.read_text(errors='replace')}")


@contextlib.asynccontextmanager
async def mcp_client(
    url: str, *, transport: str = "streamable", headers: Mapping[str, str] | None = None, **callbacks: Any
) -> AsyncIterator[Client]:
    """A connected official-SDK client over Streamable HTTP (`url`) or legacy SSE (`url` of /sse)."""
    hdrs = dict(AUTH_HEADER if headers is None else headers)
    if transport == "sse":
        target: Any = sse_client(url, headers=hdrs)
        async with Client(target, **callbacks) as client:
            yield client
        return
    timeout = httpx2.Timeout(30, read=120)
    async with httpx2.AsyncClient(headers=hdrs, timeout=timeout) as http:
        async with Client(streamable_http_client(url, http_client=http), **callbacks) as client:
            yield client
