"""Helpers for the upstream channel tests: real MCP servers on loopback, message recorders."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_barbican.jsonrpc import Message, RequestId

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PORT_MARKER = "MCP_BARBICAN_TEST_PORT="
NODE_PRELOAD = HERE / "loopback_listen.cjs"
PY_SERVER = HERE / "mcp_test_server.py"
_EVERYTHING = Path("@modelcontextprotocol/server-everything/dist/index.js")
EVERYTHING_CANDIDATES = (REPO / "tests/node/node_modules" / _EVERYTHING,)
PROTOCOL_VERSION = "2025-11-25"


def find_node() -> str | None:
    return shutil.which("node") or next(
        (str(p) for p in [REPO / "tests/node/node_modules/.bin/node"] if p.exists()), None
    )


def find_everything() -> Path | None:
    return next((p for p in EVERYTHING_CANDIDATES if p.exists()), None)


class ServerProcess:
    """A server subprocess that reports its loopback port on its output."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._ports: queue.Queue[int] = queue.Queue()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip())
            if line.startswith(PORT_MARKER):
                self._ports.put(int(line[len(PORT_MARKER) :]))

    def wait_port(self, timeout: float = 20.0) -> int:
        try:
            return self._ports.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            tail = "\n".join(self.output)
            raise RuntimeError(f"{self.argv} did not report a port:\n{tail}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def running(argv: Sequence[str], url_template: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server, yield its URL (`url_template` formatted with the port), stop it."""
    server = ServerProcess(argv, env)
    try:
        port = server.wait_port()
        yield url_template.format(port=port)
    finally:
        server.stop()


def everything_argv(mode: str) -> list[str]:
    node, script = find_node(), find_everything()
    assert node is not None and script is not None
    return [node, "--require", str(NODE_PRELOAD), str(script), mode]


def python_server_argv(*args: str) -> list[str]:
    return [sys.executable, str(PY_SERVER), *args]


class Recorder:
    """Collects what a channel hands to its callbacks; awaits messages by predicate."""

    def __init__(self) -> None:
        self.messages: list[tuple[Message, RequestId | None]] = []
        self.closes: list[BaseException | None] = []
        self._changed = asyncio.Event()

    def on_message(self, message: Message, related: RequestId | None) -> None:
        self.messages.append((message, related))
        self._changed.set()

    def on_close(self, error: BaseException | None) -> None:
        self.closes.append(error)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Message, RequestId | None], bool], timeout: float = 10.0, *, since: int = 0
    ) -> tuple[Message, RequestId | None]:
        """The first message recorded at index `since` or later that matches `predicate`."""
        async with asyncio.timeout(timeout):
            while True:
                for message, related in self.messages[since:]:
                    if predicate(message, related):
                        return message, related
                self._changed.clear()
                await self._changed.wait()

    async def response(self, request_id: RequestId, timeout: float = 10.0) -> tuple[Message, RequestId | None]:
        return await self.wait_for(lambda m, _: "method" not in m and m.get("id") == request_id, timeout)

    async def closed(self, timeout: float = 10.0) -> BaseException | None:
        async with asyncio.timeout(timeout):
            while not self.closes:
                self._changed.clear()
                await self._changed.wait()
        return self.closes[0]


def request(request_id: RequestId, method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize(request_id: RequestId = 0, capabilities: dict[str, Any] | None = None) -> Message:
    return request(
        request_id,
        "initialize",
        {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": capabilities or {},
            "clientInfo": {"name": "mcp-barbican-tests", "version": "0"},
        },
    )


def tool_text(response: Message) -> str:
    """The text of the first content block of a tools/call result."""
    return str(response["result"]["content"][0]["text"])


@dataclass(frozen=True)
class TLS:
    """A TLSOptions as the configuration would provide it."""

    enabled: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    min_version: str = "1.2"
    max_version: str = "1.3"
    cipher_suites: tuple[str, ...] = ()


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Channel tasks still pending (they are all named mcp-barbican-...)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mcp-barbican-") and not t.done()]
