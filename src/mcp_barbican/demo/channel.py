"""The demo server's stdio transport: newline-delimited messages on two file descriptors."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import Final

from mcp_barbican.demo.base import MAX_LINE_BYTES

__all__ = ["Line", "Oversized", "StdioLines"]

_READ_CHUNK: Final = 64 * 1024


class Oversized:
    """Stands for an input line longer than MAX_LINE_BYTES, which was dropped unread."""


Line = bytes | Oversized | None


# ---------------------------------------------------------------------------------------------
# stdio transport


class StdioLines:
    """Moves newline-delimited messages between the event loop and two file descriptors.

    Raw fds on daemon threads rather than asyncio pipe transports: those set O_NONBLOCK on the
    shared file description (which breaks a terminal the demo was started from), and a daemon
    thread blocked inside a buffered `sys.stdin` lock aborts interpreter shutdown.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, in_fd: int = 0, out_fd: int = 1) -> None:
        self.lines: asyncio.Queue[Line] = asyncio.Queue()
        self._loop = loop
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read_lines, name="demo-stdin", daemon=True)
        self._writer = threading.Thread(target=self._write_lines, name="demo-stdout", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def send(self, data: bytes) -> None:
        self._outbox.put(data)

    def close(self, timeout: float) -> None:
        """Flush what was sent so far, then stop the writer."""
        self._outbox.put(None)
        self._writer.join(timeout)

    def _read_chunk(self) -> bytes:
        try:
            return os.read(self._in_fd, _READ_CHUNK)
        except OSError:
            return b""

    def _read_lines(self) -> None:
        parts: list[bytes] = []
        size = 0
        for chunk in iter(self._read_chunk, b""):
            *complete, tail = chunk.split(b"\n")
            for piece in complete:
                self._post(Oversized() if size + len(piece) > MAX_LINE_BYTES else b"".join([*parts, piece]))
                parts, size = [], 0
            parts.append(tail)
            size += len(tail)
            if size > MAX_LINE_BYTES:
                parts = []  # keep counting `size` so the line is reported once its newline arrives
        if size:
            self._post(Oversized() if size > MAX_LINE_BYTES else b"".join(parts))
        self._post(None)

    def _post(self, line: Line) -> None:
        try:
            self._loop.call_soon_threadsafe(self.lines.put_nowait, line)
        except RuntimeError:
            pass  # the loop is already closed: nobody is listening any more

    def _write_lines(self) -> None:
        while (data := self._outbox.get()) is not None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._out_fd, view) :]
            except OSError:
                return  # the client stopped reading; its closed stdin ends the session


# ---------------------------------------------------------------------------------------------
# argument checking for the small JSON Schema subset the tools use
