"""Writing an event stream as an SSE response: in one piece when it is complete, else as events come.

Streams are relayed unbuffered (`X-Accel-Buffering: no`) with a keep-alive comment on a quiet
stream, and end when the stream ends or the client goes away. A stream with no end of its own (a
session's GET stream, a legacy SSE connection) is given the server's `stopping` event and ends its
response cleanly when a graceful stop begins: otherwise the stop would wait for it, then cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from mcp_barbican.asgi import wait_disconnect
from mcp_barbican.server.streams import EventStream, priming_event
from mcp_barbican.types import Receive, Send

__all__ = ["KEEPALIVE_SECONDS", "SSE_HEADERS", "pump", "stream_answer"]

#: Seconds between SSE comment lines on an otherwise quiet stream, so proxies keep it open.
KEEPALIVE_SECONDS: Final = 15.0
SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store, no-transform"),  # tool results are not for any cache to keep
    (b"x-accel-buffering", b"no"),
]


async def stream_answer(
    send: Send,
    receive: Receive,
    stream: EventStream,
    headers: list[tuple[bytes, bytes]],
    *,
    start: int = 1,
    prime: bool = True,
    wait_first: bool = True,
    stopping: asyncio.Event | None = None,
) -> None:
    """Write a stream as an SSE response; in one piece when it is already complete."""
    if wait_first:
        await stream.wait(start, KEEPALIVE_SECONDS)
    head = priming_event(stream.event_id(start - 1)) if prime else b""
    events, cursor = stream.read_from(start)
    if stream.done and cursor >= stream.next_seq:
        body = head + b"".join(events)
        stream.delivered = cursor
        out = [*SSE_HEADERS, *headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": head + b"".join(events), "more_body": True})
    stream.delivered = cursor
    await pump(send, receive, stream, cursor, stopping)


async def pump(
    send: Send, receive: Receive, stream: EventStream, cursor: int, stopping: asyncio.Event | None = None
) -> None:
    """Relay events as they come until the stream ends, the client goes away or `stopping` is set."""
    stream.attached = True
    gone: asyncio.Future[Any] = asyncio.ensure_future(wait_disconnect(receive))
    ending: asyncio.Future[Any] | None = None if stopping is None else asyncio.ensure_future(stopping.wait())
    watched = {gone} if ending is None else {gone, ending}
    try:
        while True:
            if stream.done and cursor >= stream.next_seq or ending is not None and ending.done():
                await send({"type": "http.response.body", "body": b""})
                return
            waiter = stream.waiter(cursor)
            done, _ = await asyncio.wait(
                {waiter, *watched}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if gone in done:
                waiter.cancel()
                return
            if ending is not None and ending in done:
                waiter.cancel()
                continue
            if not done:
                waiter.cancel()
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                continue
            events, cursor = stream.read_from(cursor)
            if events:
                await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
                stream.delivered = cursor
    except OSError:
        return
    finally:
        stream.attached = False
        for task in watched:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
