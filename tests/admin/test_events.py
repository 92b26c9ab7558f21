"""/admin/events as a stream, in process: the backlog after Last-Event-ID, live records, bounded readers, the end."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mcp_barbican.admin.events import event_frame, last_event_id, stream_events
from mcp_barbican.asgi import STOPPING_EXTENSION
from mcp_barbican.audit import EventFeed
from mcp_barbican.types import Message

pytestmark = pytest.mark.anyio


def scope(last: bytes | None = None) -> dict[str, Any]:
    headers = [] if last is None else [(b"last-event-id", last)]
    return {"type": "http", "method": "GET", "path": "/admin/events", "headers": headers}


class Client:
    """An ASGI peer: collects what is sent, disconnects on demand."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.sent = asyncio.Event()
        self.gone = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        self.sent.set()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.body.decode().splitlines() if line.startswith("id: ")]

    async def until(self, text: bytes) -> None:
        async with asyncio.timeout(5):
            while text not in self.body:
                self.sent.clear()
                await self.sent.wait()


def record(i: int) -> dict[str, Any]:
    return {"type": "ban", "success": True, "action": f"a{i}"}


@pytest.mark.parametrize(
    ("header", "seen"),
    [(None, 0), (b"", 0), (b"7", 7), (b" 12 ", 12), (b"-1", 0), (b"abc", 0), (b"9" * 30, 0)],
)
def test_last_event_id(header: bytes | None, seen: int) -> None:
    assert last_event_id(header) == seen


def test_a_frame_is_one_event_with_its_id_type_and_json() -> None:
    frame = event_frame({"id": 3, "type": "ip_block", "resource": "a\nb"})
    lines = frame.split(b"\n")
    assert lines[:2] == [b"id: 3", b"event: ip_block"]
    assert orjson.loads(lines[2].removeprefix(b"data: ")) == {"id": 3, "type": "ip_block", "resource": "a\nb"}
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 4


async def test_the_backlog_after_last_event_id_then_live_records_then_the_end_on_disconnect() -> None:
    feed = EventFeed()
    await feed.write([record(i) for i in range(5)])
    client = Client()
    task = asyncio.create_task(stream_events(feed, scope(b"3"), client.receive, client.send, keepalive=60))
    await client.until(b": connected")
    assert client.messages[0]["status"] == 200
    assert dict(client.messages[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert client.ids() == [4, 5]
    await feed.write([record(5), {"type": "authentication", "success": True}])  # routine: not streamed
    await client.until(b"id: 6")
    assert client.ids() == [4, 5, 6]
    client.gone.set()
    async with asyncio.timeout(5):
        await task
    assert feed.subscribers == 0


async def test_keep_alive_comments_while_nothing_happens() -> None:
    feed = EventFeed()
    client = Client()
    task = asyncio.create_task(stream_events(feed, scope(), client.receive, client.send, keepalive=0.05))
    await client.until(b": keep-alive\n\n")
    client.gone.set()
    async with asyncio.timeout(5):
        await task


async def test_the_stream_ends_cleanly_when_the_feed_closes() -> None:
    feed = EventFeed()
    client = Client()
    task = asyncio.create_task(stream_events(feed, scope(), client.receive, client.send, keepalive=60))
    await client.until(b": connected")
    await feed.aclose()
    async with asyncio.timeout(5):
        await task
    assert client.messages[-1] == {"type": "http.response.body", "body": b""}


async def test_readers_are_bounded_and_a_proxy_without_an_audit_sink_says_so() -> None:
    feed = EventFeed(max_subscribers=1)
    first = Client()
    task = asyncio.create_task(stream_events(feed, scope(), first.receive, first.send, keepalive=60))
    await first.until(b": connected")
    second = Client()
    await stream_events(feed, scope(), second.receive, second.send)
    assert second.messages[0]["status"] == 503
    assert orjson.loads(second.body)["error"] == "too_many_readers"
    first.gone.set()
    await task
    none = Client()
    await stream_events(None, scope(), none.receive, none.send)
    assert none.messages[0]["status"] == 409
    assert orjson.loads(none.body)["error"] == "no_event_feed"


async def test_the_stream_ends_its_response_when_the_server_begins_to_stop() -> None:
    feed = EventFeed()
    client = Client()
    stopping = asyncio.Event()
    request = {**scope(), "extensions": {STOPPING_EXTENSION: stopping}}
    task = asyncio.create_task(stream_events(feed, request, client.receive, client.send, keepalive=60))
    await client.until(b": connected")
    stopping.set()
    async with asyncio.timeout(5):
        await task
    assert client.messages[-1] == {"type": "http.response.body", "body": b""}
    assert feed.subscribers == 0
