#!/usr/bin/env python3
"""The S1 upstream's own limit: `tools/call` of `echo` straight into a stdio MCP server.

Starts COMMAND as a child, runs initialize + notifications/initialized + one probe call, then keeps
`--inflight` requests in flight for `--seconds` over its stdin/stdout (newline-delimited JSON-RPC,
a fresh id each) and prints one JSON object: calls, good, bad, rps. No HTTP is involved, so this is
what the upstream itself can do; the bench runs it with the child on CPU 0 and this pump on CPU 1.

    python bench/stdiopump.py --seconds 10 -- taskset -c 0 node .../server-everything/dist/index.js stdio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

_PROTOCOL = "2025-11-25"


class Pump:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.reader_task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            line = await self.stdout.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "method" in message:
                if "id" in message:
                    # A server-to-client request: we declared no capabilities, so refuse it.
                    reply = {
                        "jsonrpc": "2.0",
                        "id": message["id"],
                        "error": {"code": -32601, "message": "not supported"},
                    }
                    self.stdin.write(json.dumps(reply).encode() + b"\n")
                continue
            future = self.pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(EOFError("the stdio server closed its stdout"))
        self.pending.clear()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        request_id = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode() + b"\n"
        )
        return await future

    def notify(self, method: str) -> None:
        self.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n")


_ECHO = {"name": "echo", "arguments": {"message": "hello"}}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *args.command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        limit=16 * 1024 * 1024,
    )
    try:
        pump = Pump(proc)
        init = await asyncio.wait_for(
            pump.call(
                "initialize",
                {
                    "protocolVersion": _PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "mcp-barbican-bench-stdiopump", "version": "1"},
                },
            ),
            timeout=args.start_timeout,
        )
        if "result" not in init:
            raise RuntimeError(f"initialize failed: {init}")
        pump.notify("notifications/initialized")
        probe = await asyncio.wait_for(pump.call("tools/call", _ECHO), timeout=args.start_timeout)
        if "result" not in probe:
            raise RuntimeError(f"probe call failed: {probe}")

        good = 0
        bad = 0
        first_bad = ""
        deadline = time.perf_counter() + args.seconds

        async def worker() -> None:
            nonlocal good, bad, first_bad
            while time.perf_counter() < deadline:
                reply = await pump.call("tools/call", _ECHO)
                if "result" in reply:
                    good += 1
                else:
                    bad += 1
                    first_bad = first_bad or json.dumps(reply)[:300]

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.inflight))), args.seconds + 30)
        elapsed = time.perf_counter() - started
        return {
            "calls": good + bad,
            "good": good,
            "bad": bad,
            "seconds": elapsed,
            "rps": good / elapsed,
            "inflight": args.inflight,
            "server_protocol": init["result"].get("protocolVersion"),
            "first_bad": first_bad,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--start-timeout", type=float, default=30.0)
    parser.add_argument("command", nargs="+", help="the stdio server command (after --)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
