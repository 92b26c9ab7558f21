"""The audit pipeline: a bounded buffer, one writer task, every sink, nothing lost in silence.

`emit` waits while the queue is full, so a sink that cannot keep up slows the requests that
produce events instead of dropping them (backpressure). The writer takes what is queued in
batches and hands each batch to every sink; a sink that raises loses that batch for itself
only: the failure is counted per sink and logged, and the other sinks still get it.
`aclose` drains the queue and closes the sinks, so a clean shutdown loses nothing.
The Redis stream sink (`stream.py`) is the exception that proves the rule: it queues on its own,
so an unreachable Redis never slows requests, and counts what its bounded queue has to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from mcp_barbican.audit.events import AuditEvent
from mcp_barbican.audit.sinks import FileSink, Sink, SqliteSink, StdoutSink, SyslogSink
from mcp_barbican.logs import log_unexpected

if TYPE_CHECKING:
    from mcp_barbican.config import AuditConfig, StorageConfig
    from mcp_barbican.storage import Storage

__all__ = ["MAX_BATCH", "AuditTrail", "Queryable", "build_sinks"]

logger = logging.getLogger(__name__)

MAX_BATCH: Final = 512
#: How long the writer lets events gather before a write: batches make the sinks' per-write
#: costs (a thread hand-off, a syscall, a SQLite transaction) a few per second, not per request.
LINGER: Final = 0.02
#: At most one log line per sink per this many seconds while it keeps failing.
_LOG_EVERY: Final = 10.0


@runtime_checkable
class Queryable(Protocol):
    """A sink /admin/audit reads (newest first; see `SqliteSink.query`)."""

    async def query(
        self,
        *,
        type: str | None = None,
        user: str | None = None,
        mcp: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...


def build_sinks(config: AuditConfig, storage: StorageConfig, store: Storage | None = None) -> list[Sink]:
    """The configured sinks; a `redis` sink writes through `store`'s Redis (the config requires a Redis store)."""
    sinks: list[Sink] = []
    for sink in config.sinks:
        if sink.type == "stdout":
            sinks.append(StdoutSink())
        elif sink.type == "file":
            sinks.append(FileSink(Path(sink.path), max_bytes=int(sink.max_bytes), backups=sink.backups))
        elif sink.type == "syslog":
            sinks.append(SyslogSink(sink.address, facility=sink.facility))
        elif sink.type == "redis":
            from mcp_barbican.audit.stream import RedisStreamSink  # redis-py is loaded only by those who use it
            from mcp_barbican.storage.redis import RedisStorage

            assert isinstance(store, RedisStorage), "server.audit.sinks: redis needs server.storage.type: redis"
            stream = sink.stream if sink.stream is not None else f"{store.prefix}audit"
            sinks.append(
                RedisStreamSink(store.redis, stream=stream, max_len=sink.max_len, max_pending=sink.max_pending)
            )
        else:
            path = Path(sink.path) if sink.path is not None else Path(storage.path).parent / "audit.db"
            sinks.append(SqliteSink(path))
    return sinks


class AuditTrail:
    def __init__(self, sinks: list[Sink], *, queue_size: int = 10000, arguments: str = "redact") -> None:
        self.sinks = sinks
        self.arguments = arguments
        self.written = 0
        self._failed: dict[str, int] = {sink.name: 0 for sink in sinks}
        # A deque and two kinds of waiter rather than asyncio.Queue, whose put/get/task_done
        # cost a few µs per event on the request path: here emitting is an append.
        self._buffer: deque[AuditEvent] = deque()
        self._capacity = queue_size
        #: Events emitted and not yet handed to every sink (queued, or in the batch being written).
        self._unwritten = 0
        self._writer_idle: asyncio.Future[None] | None = None
        self._room_waiters: list[asyncio.Future[None]] = []
        self._drained: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._last_log: dict[str, float] = {}
        self._pending: set[asyncio.Future[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    @property
    def failed(self) -> dict[str, int]:
        """Events each sink failed to write, by sink name (those a sink's own queue dropped included)."""
        return {sink.name: self._failed[sink.name] + getattr(sink, "dropped", 0) for sink in self.sinks}

    @property
    def queryable(self) -> Queryable | None:
        """The sink /admin/audit reads: the Redis stream if configured (every replica's events), else SQLite."""
        found = [sink for sink in self.sinks if isinstance(sink, Queryable)]
        return next((sink for sink in found if not isinstance(sink, SqliteSink)), found[0] if found else None)

    def start(self) -> None:
        if self.sinks and self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="audit-writer")

    async def emit(self, event: AuditEvent) -> None:
        """Queue one event; waits while the queue is full."""
        if not self.sinks:
            return
        while len(self._buffer) >= self._capacity:
            room = asyncio.get_running_loop().create_future()
            self._room_waiters.append(room)
            await room
        self._append(event)

    def emit_soon(self, event: AuditEvent) -> None:
        """Queue one event from synchronous code: at once if there is room, else as soon as there is."""
        if not self.sinks:
            return
        if len(self._buffer) < self._capacity:
            self._append(event)
            return
        task = asyncio.ensure_future(self.emit(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _append(self, event: AuditEvent) -> None:
        self._buffer.append(event)
        self._unwritten += 1
        idle = self._writer_idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def aclose(self) -> None:
        """Write everything queued, then close the sinks."""
        if self._pending:
            await asyncio.gather(*self._pending)
        if self._writer is not None:
            if self._unwritten:
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        for sink in self.sinks:
            try:
                await sink.aclose()
            except Exception:
                log_unexpected(logger, "audit sink %s did not close cleanly", sink.name)

    async def _write_forever(self) -> None:
        buffer = self._buffer
        while True:
            if not buffer:
                self._writer_idle = asyncio.get_running_loop().create_future()
                await self._writer_idle
                self._writer_idle = None
            if len(buffer) < MAX_BATCH:
                await asyncio.sleep(LINGER)
            batch = [buffer.popleft() for _ in range(min(len(buffer), MAX_BATCH))]
            waiters, self._room_waiters = self._room_waiters, []
            for room in waiters:
                if not room.done():
                    room.set_result(None)
            try:
                await self._write(batch)
            finally:
                self._unwritten -= len(batch)
                if not self._unwritten and self._drained is not None and not self._drained.done():
                    self._drained.set_result(None)

    async def _write(self, batch: list[AuditEvent]) -> None:
        records = [event.as_dict() for event in batch]
        for sink in self.sinks:
            try:
                await sink.write(records)
            except Exception as exc:
                self._failed[sink.name] += len(records)
                now = time.monotonic()
                if now - self._last_log.get(sink.name, -_LOG_EVERY) >= _LOG_EVERY:
                    self._last_log[sink.name] = now
                    logger.error(
                        "audit sink %s failed to write %d event(s) (%d so far): %s",
                        sink.name,
                        len(records),
                        self._failed[sink.name],
                        exc,
                    )
        self.written += len(records)
