"""A small MCP server (official Python SDK) for the upstream channel tests.

    python mcp_test_server.py streamable-http [--json-response] [--retry-ms N]
    python mcp_test_server.py sse

It binds 127.0.0.1 on a free port and prints `MCP_BARBICAN_TEST_PORT=<port>` on stderr once
it listens. Streamable HTTP mode keeps an in-memory event store, so streams are resumable.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore


class MemoryEventStore(EventStore):
    """Keeps every event of every stream; ids are globally unique counters."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, Any]] = []  # (event id, stream id, message or None)
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = f"e{next(self._ids)}"
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        index = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, sid, message in self._events[index + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


server = MCPServer("barbican-test-server")
_acked = asyncio.Event()


@server.tool()
def echo(message: str) -> str:
    """Echo the message back."""
    return f"Echo: {message}"


@server.tool()
async def slow(ctx: Context, steps: int = 3, delay: float = 0.05) -> str:
    """Report progress `steps` times, `delay` seconds apart."""
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        await ctx.report_progress(step, steps)
    return f"done after {steps} steps"


@server.tool()
async def resumable(ctx: Context) -> str:
    """Report progress, close the response stream (the client must resume), go on."""
    await ctx.report_progress(1, 3)
    await ctx.close_sse_stream()
    await asyncio.sleep(0.05)
    await ctx.report_progress(2, 3)
    await ctx.report_progress(3, 3)
    return "resumed"


@server.tool()
async def announce(ctx: Context) -> int:
    """Send tools/list_changed on the session's GET stream until `ack` is called (max 5 s)."""
    _acked.clear()
    sent = 0
    for _ in range(100):
        await ctx.session.send_tool_list_changed()
        sent += 1
        try:
            await asyncio.wait_for(_acked.wait(), 0.05)
            break
        except TimeoutError:
            pass
    return sent


@server.tool()
def ack() -> str:
    """Stop `announce`."""
    _acked.set()
    return "acked"


@server.tool()
async def close_get(ctx: Context) -> str:
    """Close the standalone GET stream; the client should reconnect."""
    await ctx.close_standalone_sse_stream()
    return "closed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["streamable-http", "sse"])
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--retry-ms", type=int, default=None)
    args = parser.parse_args()

    if args.transport == "sse":
        app = server.sse_app(host="127.0.0.1")
    else:
        app = server.streamable_http_app(
            host="127.0.0.1",
            json_response=args.json_response,
            event_store=None if args.json_response else MemoryEventStore(),
            retry_interval=args.retry_ms,
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue until uvicorn accepts them
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn_server = uvicorn.Server(config)
    print(f"MCP_BARBICAN_TEST_PORT={sock.getsockname()[1]}", file=sys.stderr, flush=True)
    asyncio.run(uvicorn_server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
