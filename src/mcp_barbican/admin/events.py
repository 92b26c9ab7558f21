"""`GET /admin/events`: the live security events (audit/feed.py) as Server-Sent Events.

Each record is one event: `id:` its feed number, `event:` its type, `data:` the record as JSON.
A reader gets the recent backlog first (only records newer than its `Last-Event-ID`), then live
records as the trail writes them, and a comment every `keepalive` seconds. Each record is sent as
its own body chunk, never held back. The stream ends when the client goes, when the server begins
to stop (our server's STOPPING_EXTENSION: a graceful stop would otherwise wait on it, then cancel
it) or when the feed closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson

from mcp_barbican.asgi import get_header, json_error, stopping_event, wait_disconnect

if TYPE_CHECKING:
    from mcp_barbican.audit import EventFeed
    from mcp_barbican.types import Receive, Scope, Send

__all__ = ["KEEPALIVE_SECONDS", "event_frame", "last_event_id", "stream_events"]

KEEPALIVE_SECONDS: Final = 15.0
_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),
]


def event_frame(record: dict[str, Any]) -> bytes:
    """One SSE event; orjson writes no raw newline, so `data:` stays one line."""
    kind = str(record.get("type", "event")).replace("\n", " ").replace("\r", " ")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (int(record["id"]), kind.encode(), orjson.dumps(record))


def last_event_id(header: bytes | None) -> int:
    """The id a reconnecting reader saw last (0: none, or not a number)."""
    if header is None:
        return 0
    text = header.strip()
    return int(text) if text.isdigit() and len(text) < 20 else 0


async def stream_events(
    feed: EventFeed | None, scope: Scope, receive: Receive, send: Send, keepalive: float = KEEPALIVE_SECONDS
) -> None:
    if feed is None:
        await json_error(
            send, 409, "no_event_feed", "live events need an audit sink: configure server.audit.sinks (see /admin/ui)"
        )
        return
    async with feed.subscription() as subscription:
        if subscription is None:
            await json_error(send, 503, "too_many_readers", f"{feed.max_subscribers} readers are following already")
            return
        seen = last_event_id(get_header(scope, b"last-event-id"))
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        # The subscription is open before the backlog is read, so nothing falls between; ids skip repeats.
        seen = await _send_records(send, feed.recent, seen)
        await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
        gone: asyncio.Future[Any] = asyncio.ensure_future(wait_disconnect(receive))
        stopping = stopping_event(scope)
        ending: asyncio.Future[Any] = asyncio.ensure_future((stopping or asyncio.Event()).wait())
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait(
                    {pending, gone, ending}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    return
                if ending in done:
                    await send({"type": "http.response.body", "body": b""})
                    return
                if not done:
                    await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                    continue
                try:
                    record = pending.result()
                except EOFError:  # the feed closed
                    await send({"type": "http.response.body", "body": b""})
                    return
                pending = None
                seen = await _send_records(send, [record, *subscription.drain()], seen)
        except OSError:
            return
        finally:
            for task in (pending, gone, ending):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, EOFError):
                        await task


async def _send_records(send: Send, records: Iterable[dict[str, Any]], seen: int) -> int:
    frames = []
    for record in list(records):
        if int(record["id"]) > seen:
            frames.append(event_frame(record))
            seen = int(record["id"])
    if frames:
        await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
    return seen
