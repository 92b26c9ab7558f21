"""The audit sink on a Redis stream: one entry per event, shared by every replica on one Redis.

Writing never waits on Redis: `write` queues the batch and a task of the sink's own sends what
is queued, one XADD per event in one MULTI/EXEC pipeline (all of a batch or none of it, so a
batch sent again after a failure is not written twice). While Redis is unreachable the events
wait, up to `max_pending`; past that the oldest are dropped and counted (`dropped`). An outage
gets one line when it starts and one when the waiting events are written, never one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from redis.exceptions import RedisError

from mcp_barbican.exceptions import StorageError
from mcp_barbican.logs import log_unexpected

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStreamSink"]

logger = logging.getLogger(__name__)

Record = dict[str, Any]

#: Events per pipeline.
BATCH: Final = 512
#: Entries read per XREVRANGE when answering a query.
PAGE: Final = 1000
#: How far a replica's clock may run ahead of Redis's: a query for events since T stops reading at stream
#: ids older than T minus this (an event's id is when Redis wrote it, never before the event for one clock).
CLOCK_SKEW_MS: Final = 60_000
#: How long closing waits for the events still queued.
CLOSE_SECONDS: Final = 2.0


class RedisStreamSink:
    """Events as entries `{event: JSON}` of `stream`, trimmed to about `max_len` entries."""

    def __init__(self, redis: Redis, *, stream: str, max_len: int, max_pending: int, retry: float = 1.0) -> None:
        self.name = f"redis:{stream}"
        self.redis = redis
        self.stream = stream
        self.max_len = max_len
        self.max_pending = max_pending
        self.retry = retry
        #: Events dropped because Redis stayed unreachable with `max_pending` waiting.
        self.dropped = 0
        self._pending: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        #: While failing: when the outage began, and the drop count then.
        self._outage: tuple[float, int] | None = None

    async def write(self, batch: list[Record]) -> None:
        self._pending.extend(orjson.dumps(record) for record in batch)
        self._bound()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_forever(), name="audit-redis-stream")
        self._wake.set()

    def _bound(self) -> None:
        overflow = len(self._pending) - self.max_pending
        for _ in range(overflow):
            self._pending.popleft()
        if overflow > 0:
            self.dropped += overflow

    async def _send_forever(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            elif not await self._send_some():
                await asyncio.sleep(self.retry)

    async def _send_some(self) -> bool:
        """Send one batch; False (the batch queued again, first) when Redis did not take it."""
        batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for event in batch:
                    pipe.xadd(self.stream, {"event": event}, maxlen=self.max_len, approximate=True)
                await pipe.execute()
        except asyncio.CancelledError:
            self._pending.extendleft(reversed(batch))
            raise
        except (RedisError, OSError) as exc:
            self._failed(batch, str(exc))
            return False
        except Exception:
            log_unexpected(logger, "audit sink %s: writing to Redis failed", self.name)
            self._failed(batch, "unexpected error")
            return False
        if self._outage is not None and not self._pending:
            began, dropped = self._outage
            self._outage = None
            logger.info(
                "audit sink %s: Redis reachable again after %.1f s; queued events written, %d dropped meanwhile",
                self.name,
                time.monotonic() - began,
                self.dropped - dropped,
            )
        return True

    def _failed(self, batch: list[bytes], why: str) -> None:
        self._pending.extendleft(reversed(batch))
        self._bound()
        if self._outage is None:
            self._outage = (time.monotonic(), self.dropped)
            logger.warning(
                "audit sink %s: Redis unreachable (%s); holding up to %d events until it returns (oldest dropped)",
                self.name,
                why,
                self.max_pending,
            )

    async def aclose(self) -> None:
        """Send what is queued (for up to CLOSE_SECONDS); what Redis did not take by then is counted dropped."""
        self._closing = True
        self._wake.set()
        sender = self._sender
        if sender is not None and not sender.done():
            _, running = await asyncio.wait({sender}, timeout=CLOSE_SECONDS)
            if running:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        elif self._pending:
            await self._send_some()
        if self._pending:
            self.dropped += len(self._pending)
            logger.warning("audit sink %s: %d events not written at shutdown", self.name, len(self._pending))
            self._pending.clear()

    async def query(
        self,
        *,
        type: str | None = None,
        user: str | None = None,
        mcp: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Newest first (in the order Redis wrote them), as `SqliteSink.query` answers."""
        wanted = {key: value for key, value in (("type", type), ("user", user), ("mcp", mcp)) if value is not None}
        oldest_id = None if since is None else _milliseconds(since) - CLOCK_SKEW_MS
        found: list[Record] = []
        end = "+"
        try:
            while len(found) < limit:
                entries: list[Any] = await self.redis.xrevrange(self.stream, max=end, min="-", count=PAGE) or []
                for _, fields in entries:
                    record: Record = orjson.loads(fields[b"event"])
                    if _matches(record, wanted, since, until):
                        found.append(record)
                        if len(found) == limit:
                            break
                if len(entries) < PAGE:
                    break
                last = entries[-1][0].decode()
                if oldest_id is not None and int(last.partition("-")[0]) < oldest_id:
                    break
                end = f"({last}"
        except RedisError as exc:
            raise StorageError(f"the audit stream {self.stream}: {exc}") from None
        return found


def _matches(record: Record, wanted: dict[str, str], since: str | None, until: str | None) -> bool:
    if any(record.get(key) != value for key, value in wanted.items()):
        return False
    stamp = str(record.get("timestamp", ""))
    return (since is None or stamp >= since) and (until is None or stamp < until)


def _milliseconds(stamp: str) -> int:
    """An RFC 3339 UTC time as the audit writes it (`...Z`), in Unix milliseconds."""
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
