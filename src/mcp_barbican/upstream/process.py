"""The process behind a stdio upstream: spawned with its guard, wired to the event loop, ended.

No child outlives the proxy, even a proxy killed with SIGKILL. The child runs in a process
group of its own and, in that group beside it, a guard (`GUARD_SCRIPT`, `/bin/sh` and its
builtins, named `GUARD_NAME` in the process table) whose stdin is a pipe only the proxy holds
open; it ignores the signals it sends, so when the proxy dies the kernel closes the pipe and
the guard kills the group, TERM then KILL. As a member, the guard also keeps the group id from
being reused, so the proxy can kill whatever is left in the group (the child's own children)
after the child exits.

Why this way. PR_SET_PDEATHSIG needs a preexec_fn (unsafe in a threaded parent), fires
when the forking *thread* exits, reaches only the direct child and is Linux only. A wrapper
that started the command as its own child would change the child's environment (the
interpreter coerces a C locale into LC_CTYPE) and turn a missing command into an exit
code. So the command is still started directly, its environment and start errors as
before. Both processes are started with `subprocess.Popen`, which joins the group between
fork and exec in C (uvloop's subprocess API cannot), and a process can only join a group
of its own session, so the group is a new one in the proxy's session rather than a new
session. The guard costs one more fork/exec at start (the proxy does not wait for it) and an
idle shell of about 1 MB. A process that leaves the group (setsid) is beyond
its reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
from asyncio.streams import FlowControlMixin
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["ChildProcess", "spawn"]

#: The parent-death watch, run by path so it needs nothing from the package.
#: The guard's name in the process table (its `$0`), and its script: wait for the end of the
#: pipe, then end the group, TERM and a grace period first, then KILL (which ends the guard too).
#: A POSIX shell and its builtins: about 1 MB, where a Python guard took about 9 MB per child.
GUARD_NAME: Final = "mcp-barbican-guard"
GUARD_SCRIPT: Final = "trap '' HUP INT TERM; while read -r _; do :; done; kill -TERM 0; sleep 2; kill -KILL 0"
#: How often an exit is looked for while the proxy waits for one.
POLL_SECONDS: Final = 0.02


class ChildProcess:
    """A running child, its pipes as streams, and its guard."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        transports: list[asyncio.BaseTransport],
    ) -> None:
        self.proc = proc
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._transports = transports
        self.guard: subprocess.Popen[bytes] | None = None
        #: The write end of the guard's pipe: held, never written, closed when the group is gone.
        self._lifeline: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the child still runs after `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (code := self.proc.poll()) is None and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECONDS)  # polled: the loop's own child watcher does not know this process
        return code

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the group while its id is surely ours: the child or the guard not yet reaped."""
        if self.proc.poll() is None or (self.guard is not None and self.guard.poll() is None):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def watch(self) -> None:
        """Start the guard in the child's group (see the module docstring); without one, say why."""
        read_end, write_end = os.pipe()
        try:
            self.guard = subprocess.Popen(
                ["/bin/sh", "-c", GUARD_SCRIPT, GUARD_NAME],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin"},  # for `sleep`; nothing of the child's environment
                process_group=self.proc.pid,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._lifeline = write_end

    async def end_group(self, grace: float) -> None:
        """Kill what is left of the group, the guard included, and release every pipe."""
        if self.guard is not None:
            self.signal_group(signal.SIGKILL)
            deadline = asyncio.get_running_loop().time() + grace
            while self.guard.poll() is None and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(POLL_SECONDS)
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            os.close(lifeline)
        for transport in self._transports:
            transport.close()


async def spawn(command: str, args: Sequence[str], env: Mapping[str, str], cwd: str | None, limit: int) -> ChildProcess:
    """Start the child in a new process group, its stdin, stdout and stderr as streams (`limit`: longest line)."""
    # A brief fork/exec on the loop, as asyncio's own subprocess API does; uvloop's cannot set a group.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [command, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        process_group=0,
    )
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    try:
        stdout = asyncio.StreamReader(limit=limit)
        stderr = asyncio.StreamReader(limit=limit)
        for reader, pipe in ((stdout, proc.stdout), (stderr, proc.stderr)):
            protocol_factory = functools.partial(asyncio.StreamReaderProtocol, reader)
            read_transport, _ = await loop.connect_read_pipe(protocol_factory, pipe)
            transports.append(read_transport)
        write_transport, protocol = await loop.connect_write_pipe(FlowControlMixin, proc.stdin)
        transports.append(write_transport)
        stdin = asyncio.StreamWriter(write_transport, protocol, None, loop)
    except BaseException:
        for transport in transports:
            transport.close()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.kill()
        proc.wait()
        raise
    return ChildProcess(proc, stdin, stdout, stderr, transports)
