"""Event streams: the messages bound for one downstream response, kept for resumption.

Every downstream SSE response (a POST's answer stream, the standalone GET stream, a legacy
SSE connection) reads from an `EventStream`. Producers `push()` encoded messages without
ever blocking; consumers read from a cursor, so a client that reconnects with
`Last-Event-ID` gets what it missed on that same stream and nothing from another one.
Memory is bounded: a stream keeps its last `MAX_EVENTS` events.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

__all__ = ["MAX_EVENTS", "EventStream", "encode_event", "priming_event"]

#: Events kept per stream for late or reconnecting readers.
MAX_EVENTS: Final = 512
#: Reconnection delay we ask SSE clients to use (milliseconds).
RETRY_MS: Final = 1000


def encode_event(event_id: str | None, data: bytes) -> bytes:
    if event_id is None:
        return b"event: message\ndata: " + data + b"\n\n"
    return b"event: message\nid: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


def priming_event(event_id: str) -> bytes:
    """An event with an id and no data: lets the client resume even before the first message."""
    return b"id: " + event_id.encode() + b"\nretry: " + str(RETRY_MS).encode() + b"\ndata: \n\n"


class EventStream:
    """An append-only, bounded log of SSE events with any number of cursor readers."""

    __slots__ = (
        "_events",
        "_first_seq",
        "_waiters",
        "attached",
        "delivered",
        "done",
        "failed",
        "final_data",
        "final_message",
        "persistent",
        "refused",
        "stream_id",
    )

    def __init__(self, stream_id: str, *, persistent: bool = False) -> None:
        self.stream_id = stream_id
        #: A GET or legacy SSE stream: carries many answers and ends only with its session.
        self.persistent = persistent
        self._events: deque[bytes] = deque(maxlen=MAX_EVENTS)
        self._first_seq = 1  # sequence number of _events[0]; 0 is the priming event
        self._waiters: list[asyncio.Future[None]] = []
        self.done = False
        #: The request it answers could not be relayed upstream (for the metrics).
        self.failed = False
        #: The proxy refused the request it answers (a hidden or denied name, refused arguments): for traces.
        self.refused = False
        #: Whether a downstream response is reading this stream right now.
        self.attached = False
        #: Sequence number of the first event no reader has been sent yet.
        self.delivered = 1
        #: The raw message that ended an answer stream (its response).
        self.final_data: bytes | None = None
        #: The same message parsed, when whoever pushed it had it parsed (saves parsing it again).
        self.final_message: dict[str, Any] | None = None

    @property
    def next_seq(self) -> int:
        return self._first_seq + len(self._events)

    def event_id(self, seq: int) -> str:
        return f"{self.stream_id}-{seq}"

    def push(self, data: bytes, *, final: bool = False, message: dict[str, Any] | None = None) -> None:
        """Append one JSON-RPC message (`message`: the same, parsed); `final` ends the stream after it."""
        if self.done:
            return
        if len(self._events) == MAX_EVENTS:
            self._first_seq += 1
        self._events.append(encode_event(self.event_id(self.next_seq), data))
        if final and not self.persistent:
            self.done = True
            self.final_data = data
            self.final_message = message
        self._wake()

    def finish(self) -> None:
        """End an answer stream (a persistent stream goes on: it serves other answers)."""
        if not self.persistent:
            self.close()

    def close(self) -> None:
        """End the stream for good: its session is over."""
        if not self.done:
            self.done = True
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def read_from(self, seq: int) -> tuple[list[bytes], int]:
        """Events from sequence `seq` on (those already evicted are skipped) and the next cursor."""
        start = max(seq, self._first_seq)
        end = self.next_seq
        if start >= end:
            return [], end
        offset = start - self._first_seq
        return [self._events[i] for i in range(offset, len(self._events))], end

    async def wait(self, seq: int, timeout: float | None) -> None:
        """Wait until an event at `seq` or later exists, the stream ends, or the timeout passes."""
        if self.done or seq < self.next_seq:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def waiter(self, seq: int) -> asyncio.Future[None]:
        """A future that completes when an event at `seq` or later exists or the stream ends."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.done or seq < self.next_seq:
            fut.set_result(None)
        else:
            self._waiters.append(fut)
        return fut
