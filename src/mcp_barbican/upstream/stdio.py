"""stdio upstreams: an MCP server run as a child process, newline-delimited JSON-RPC.

The child gets only the environment its config names plus a short allowlist (PATH, HOME,
locale...), never the proxy's own environment, so proxy secrets cannot leak into it. Its
stderr is logged line by line. Shutdown follows the spec: close stdin, wait, SIGTERM the
process group, wait, SIGKILL; every wait is bounded. Whatever of the group outlives the
child (its own children, say) is then killed too.

No child outlives the proxy, even a SIGKILLed one: the child runs in a process group of its
own, watched by a guard that kills the group when the proxy dies (`upstream.process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Mapping, Sequence
from typing import Final

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamClosed, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.upstream.base import CloseHandler, MessageHandler, UpstreamChannel
from mcp_barbican.upstream.process import ChildProcess, spawn

__all__ = ["INHERITED_ENV_VARS", "StdioChannel", "child_environment"]

logger = logging.getLogger(__name__)

#: Variables a child inherits from the proxy: enough to find programs and run, nothing secret.
INHERITED_ENV_VARS: Final = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME")
#: How long the child gets to exit after stdin closes, then after SIGTERM.
EXIT_GRACE_SECONDS: Final = 2.0
#: Largest line the child may write: MCP results can carry big embedded resources.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024
#: Pause writing when this much is queued for the child's stdin.
WRITE_HIGH_WATER: Final = 1024 * 1024


def child_environment(env: Mapping[str, str], parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the allowlisted parent variables, then the configured ones."""
    source = os.environ if parent is None else parent
    inherited = {name: source[name] for name in INHERITED_ENV_VARS if name in source}
    return {**inherited, **env}


class StdioChannel(UpstreamChannel):
    """One child process speaking MCP over stdin/stdout."""

    def __init__(
        self,
        on_message: MessageHandler,
        on_close: CloseHandler,
        *,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        name: str = "stdio",
    ) -> None:
        super().__init__(on_message, on_close)
        self._command = command
        self._args = tuple(args)
        self._env = child_environment(env or {})
        self._cwd = cwd
        self._log = logging.getLogger(f"{__name__}.{name}")
        self._proc: ChildProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        try:
            self._proc = await spawn(self._command, self._args, self._env, self._cwd, MAX_LINE_BYTES)
        except OSError as exc:
            self._closed = True
            raise UpstreamUnavailable(f"cannot start {self._command!r}: {exc.strerror or exc}") from exc
        # Spawns are made visible (the MCP spec asks proxies to): what runs, and the names of what it is given.
        self._log.info(
            "started pid %s: %s (environment: %s)",
            self._proc.pid,
            shlex.join((self._command, *self._args)),
            ", ".join(sorted(self._env)) or "empty",
        )
        try:
            self._proc.watch()
        except OSError as exc:  # no room for one more process, say
            self._log.warning("pid %s runs without a parent-death watch: %s", self._proc.pid, exc)
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name="stdio-stdout"),
            asyncio.create_task(self._read_stderr(), name="stdio-stderr"),
        ]

    async def send(self, message: Message) -> None:
        proc = self._proc
        if self._closed or proc is None or proc.stdin.is_closing():
            raise UpstreamClosed("the stdio server is not running")
        stdin = proc.stdin
        stdin.write(jsonrpc.dumps(message) + b"\n")
        transport = stdin.transport
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                await stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise UpstreamClosed("the stdio server stopped reading") from exc

    async def _read_stdout(self) -> None:
        assert self._proc is not None
        stdout = self._proc.stdout
        error: BaseException | None = None
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                if line.isspace():
                    continue
                try:
                    message = jsonrpc.loads(line)
                except ValueError:
                    self._log.warning("dropped a stdout line that is not JSON (%d bytes)", len(line))
                    continue
                if isinstance(message, dict):
                    self.on_message(message, None)
                else:
                    self._log.warning("dropped a stdout line that is not a JSON-RPC object")
        except ValueError as exc:  # a line beyond MAX_LINE_BYTES
            error = UpstreamClosed(f"the stdio server wrote an oversized line: {exc}")
        await self._ended(error)

    async def _read_stderr(self) -> None:
        assert self._proc is not None
        stderr = self._proc.stderr
        with contextlib.suppress(ValueError):
            while line := await stderr.readline():
                self._log.info("%s", line.decode(errors="replace").rstrip())

    async def _ended(self, error: BaseException | None) -> None:
        if self._closing:
            return
        proc = self._proc
        code = None
        if proc is not None:
            code = await proc.wait(EXIT_GRACE_SECONDS)
        self._closed = True
        if error is None:
            error = UpstreamClosed(f"the stdio server exited (code {code})")
        self._log.warning("%s", error)
        await self._terminate()
        self.on_close(error)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._closed = True
        current = asyncio.current_task()
        await self._terminate()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if not proc.stdin.is_closing():
            proc.stdin.close()
        await proc.wait(EXIT_GRACE_SECONDS)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                break
            proc.signal_group(sig)
            await proc.wait(EXIT_GRACE_SECONDS)
        await proc.end_group(EXIT_GRACE_SECONDS)
