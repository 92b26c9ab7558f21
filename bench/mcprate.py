#!/usr/bin/env python3
"""Open-loop MCP load at a fixed rate: a small stand-in for wrk2 (stdlib asyncio only).

Requests (`tools/call` of `echo`, a fresh JSON-RPC id each) are scheduled at RATE per second for
SECONDS over one already open MCP session, on up to 16 keep-alive HTTP/1.1 connections.

Latency runs from the moment a request is *due*, so waiting for a free connection or queueing
inside the server counts (no coordinated omission). Only the client's own timer lateness up to
`--slack-ms` (default 2 ms: asyncio rounds epoll timeouts up to whole milliseconds) is forgiven;
lateness beyond that counts, and the number of such late dispatches is reported.

A reply is good only if it is HTTP 200 and holds a JSON-RPC `result`. Prints one JSON object.

    python bench/mcprate.py --url http://127.0.0.1:6301/mcp/everything --session SID --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_RESULT = re.compile(rb'"result"\s*:')
#: Idle keep-alive connections older than this are closed rather than reused.
MAX_IDLE = 2.0


class HttpError(Exception):
    """The connection broke or the server spoke something we cannot parse."""


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    used: bool = False

    def close(self) -> None:
        self.writer.close()


@dataclass
class Target:
    host: str
    port: int
    path: str
    headers: bytes


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    good: int = 0
    bad: int = 0
    late: int = 0
    max_late: float = 0.0
    opened: int = 0
    first_bad: str = ""

    def fail(self, what: str) -> None:
        self.bad += 1
        if not self.first_bad:
            self.first_bad = what[:300]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one HTTP/1.1 response: (status, body, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep_alive = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        value = value.strip()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            keep_alive = value.lower() != b"close" if keep_alive else value.lower() == b"keep-alive"
    if chunked:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers (none expected) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, bytes(body), keep_alive
    if length is not None:
        return status, await reader.readexactly(length), keep_alive
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", keep_alive
    return status, await reader.read(), False


class Pool:
    """Up to `size` keep-alive connections; callers queue (and that wait counts) when all are busy."""

    def __init__(self, target: Target, size: int, stats: Stats, tool: bytes = b"echo") -> None:
        self.target = target
        self.tool = tool
        self.size = size
        self.stats = stats
        self.idle: list[Conn] = []
        self.count = 0
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()

    async def acquire(self) -> Conn:
        while True:
            if self.idle:
                conn = self.idle.pop()
                if time.perf_counter() - conn.idle_since <= MAX_IDLE:
                    return conn
                # Servers close idle keep-alive connections (Node after 5 s): do not race them;
                # the slot is ours, so open a fresh connection in it.
                conn.close()
                self.count -= 1
                continue
            if self.count < self.size:
                self.count += 1
                try:
                    reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
                except BaseException:
                    self.count -= 1
                    self._wake(None)
                    raise
                self.stats.opened += 1
                return Conn(reader, writer)
            waiter: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            handed = await waiter
            if handed is not None:
                return handed
            # A connection was dropped: a slot is free, loop round and open one.

    def release(self, conn: Conn, reusable: bool) -> None:
        conn.idle_since = time.perf_counter()
        conn.used = True
        if not reusable:
            conn.close()
            self.count -= 1
            self._wake(None)
            return
        if not self._wake(conn):
            self.idle.append(conn)

    def _wake(self, conn: Conn | None) -> bool:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def build_headers(args: argparse.Namespace, host: str, port: int) -> bytes:
    lines = [
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Mcp-Session-Id: {args.session}",
        f"MCP-Protocol-Version: {args.protocol}",
    ]
    if args.auth:
        lines.append(f"Authorization: {args.auth}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


async def one_call(pool: Pool, request_id: int, start: float, stats: Stats) -> None:
    body = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":{"message":"hello"}}}' % (
        request_id,
        pool.tool,
    )
    target = pool.target
    request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
        target.path.encode(),
        target.headers,
        len(body),
        body,
    )
    for attempt in (1, 2):
        try:
            conn = await pool.acquire()
        except OSError as exc:
            stats.fail(f"connect: {exc}")
            return
        reused = conn.used
        reusable = False
        try:
            conn.writer.write(request)
            status, reply, reusable = await read_response(conn.reader)
            break
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            pool.release(conn, False)
            nothing_read = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if attempt == 1 and reused and nothing_read:
                # The server closed a kept-alive connection before answering: resend once on a
                # new connection, as HTTP clients do (the time lost still counts).
                continue
            stats.fail(f"io: {exc!r}")
            return
        except (OSError, asyncio.LimitOverrunError, HttpError, ValueError) as exc:
            stats.fail(f"io: {exc!r}")
            pool.release(conn, False)
            return
        except asyncio.CancelledError:
            pool.release(conn, False)
            raise
    else:
        return
    end = time.perf_counter()
    pool.release(conn, reusable)
    if status == 200 and _RESULT.search(reply):
        stats.good += 1
        stats.latencies.append(end - start)
    else:
        stats.fail(f"{status} {reply[:300]!r}")


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    # Nearest rank.
    index = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or 80
    target = Target(host, port, url.path or "/", build_headers(args, host, port))
    stats = Stats()
    pool = Pool(target, args.connections, stats, args.tool.encode())
    count = int(args.rate * args.seconds)
    slack = args.slack_ms / 1000
    tasks: set[asyncio.Task[None]] = set()
    first_id = args.first_id
    t0 = time.perf_counter() + 0.05
    for i in range(count):
        due = t0 + i / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness = max(0.0, time.perf_counter() - due)
        stats.max_late = max(stats.max_late, lateness)
        if lateness > slack:
            stats.late += 1
        start = due + min(lateness, slack)
        task = asyncio.create_task(one_call(pool, first_id + i, start, stats))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    unfinished = 0
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=args.drain_timeout)
        unfinished = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
    elapsed = time.perf_counter() - t0
    pool.close()
    for _ in range(unfinished):
        stats.fail("timeout: no reply before the drain deadline")
    values = sorted(stats.latencies)
    ms = 1000.0
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "scheduled": count,
        "good": stats.good,
        "bad": stats.bad,
        "achieved_rps": stats.good / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(values, 50) * ms,
        "p90_ms": percentile(values, 90) * ms,
        "p99_ms": percentile(values, 99) * ms,
        "max_ms": (values[-1] * ms) if values else float("nan"),
        "late": stats.late,
        "max_late_ms": stats.max_late * ms,
        "connections": stats.opened,
        "first_bad": stats.first_bad,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", required=True, help="the MCP endpoint, http://127.0.0.1:PORT/path")
    parser.add_argument("--session", required=True, help="Mcp-Session-Id of an open session")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--protocol", default="2025-11-25", help="MCP-Protocol-Version header")
    parser.add_argument("--tool", default="echo", help="the tool to call (server-everything's echo, by its name there)")
    parser.add_argument("--auth", default=os.environ.get("MCP_AUTH", ""), help="Authorization header value")
    parser.add_argument("--first-id", type=int, default=1_000_000, help="first JSON-RPC id")
    parser.add_argument("--slack-ms", type=float, default=2.0, help="timer lateness that is not counted")
    parser.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to wait for the last replies")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.connections <= 0:
        parser.error("--rate, --seconds and --connections must be positive")
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
