"""Live security events: what `/admin/events` streams and what the alerts watch.

The feed is one more audit sink, so it sees every event the trail writes, in batches, on the
writer task and never on a request's path. It keeps the security events (`is_security_event`):
everything but the successful authentications and tool calls every request makes. A bounded
ring of the latest ones answers a console that has just connected; each subscriber has a
bounded queue of its own, and a subscriber that does not keep up loses its oldest events
(counted in `dropped`), never slows the trail or another subscriber. Listeners are called
synchronously with each kept record and must only queue work (the alerts do).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Final

from mcp_barbican.logs import log_unexpected

__all__ = ["EventFeed", "Subscription", "is_security_event"]

logger = logging.getLogger(__name__)

Record = dict[str, Any]

#: Event types whose successes are routine (one per request), not news.
_ROUTINE: Final = frozenset({"authentication", "tool_call"})


def is_security_event(record: Mapping[str, Any]) -> bool:
    """Whether an audit record is worth a live view or an alert."""
    return not (record.get("success") and record.get("type") in _ROUTINE)


class Subscription:
    """One live reader's queue: bounded, oldest dropped first when the reader falls behind."""

    def __init__(self, feed: EventFeed, capacity: int) -> None:
        self._feed = feed
        self._queue: deque[Record] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def put(self, record: Record) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(record)
        self._ready.set()

    async def get(self) -> Record:
        """The next record; raises `EOFError` once the feed closed and nothing is left."""
        while not self._queue:
            if self.closed:
                raise EOFError("event feed closed")
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def drain(self) -> Iterator[Record]:
        """What is queued now, without waiting."""
        while self._queue:
            yield self._queue.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._feed.unsubscribe(self)


class EventFeed:
    """An audit sink that keeps the security events for live readers and listeners."""

    name = "feed"

    def __init__(self, *, backlog: int = 200, subscriber_capacity: int = 1000, max_subscribers: int = 64) -> None:
        self.recent: deque[Record] = deque(maxlen=backlog)
        self.subscriber_capacity = subscriber_capacity
        self.max_subscribers = max_subscribers
        self.listeners: list[Callable[[Record], None]] = []
        self._subscribers: set[Subscription] = set()
        #: Each kept record gets the next number, so a reader can tell what it has already seen.
        self._ids = itertools.count(1)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def write(self, batch: list[Record]) -> None:
        for record in batch:
            if not is_security_event(record):
                continue
            record = {"id": next(self._ids), **record}
            self.recent.append(record)
            for subscription in self._subscribers:
                subscription.put(record)
            for listener in self.listeners:
                try:
                    listener(record)
                except Exception:
                    log_unexpected(logger, "an event listener failed on a %s event", record.get("type"))

    def subscribe(self) -> Subscription | None:
        """A new live reader, or None when `max_subscribers` are reading already."""
        if len(self._subscribers) >= self.max_subscribers:
            return None
        subscription = Subscription(self, self.subscriber_capacity)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[Subscription | None]:
        subscription = self.subscribe()
        try:
            yield subscription
        finally:
            if subscription is not None:
                subscription.close()

    async def aclose(self) -> None:
        for subscription in list(self._subscribers):
            subscription.close()
