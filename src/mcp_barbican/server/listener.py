"""The listener's own limits (`server.limits`): what one connection may hold before the app sees it.

`ListenerGuard` is the state one server shares between its connections: the open connections per
listening port (`max_connections` is per listener, so a flood on the data plane cannot lock the
operator out of a separate admin listener) and one coarse sweeper. Instead of a timer per
request, the sweeper wakes every `sweep_interval()` and asks each connection whether its head
or its body is overdue (reading the clock itself), so the request path only counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final, Protocol

from mcp_barbican.config import ListenerLimits

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mcp_barbican.security.counters import SecurityCounters

__all__ = ["Guarded", "ListenerGuard", "sweep_interval"]

logger = logging.getLogger(__name__)

#: The sweeper wakes at least this often, and at most this often for tiny timeouts.
_SWEEP_MAX: Final = 1.0
_SWEEP_MIN: Final = 0.05
#: A refusal of new connections is logged at most once per this many seconds per listener.
_LOG_EVERY: Final = 60.0


def sweep_interval(limits: ListenerLimits) -> float:
    """How often deadlines are checked: a quarter of the shortest timeout, within [0.05 s, 1 s]."""
    return min(max(min(limits.header_timeout, limits.body_timeout) / 4, _SWEEP_MIN), _SWEEP_MAX)


class Guarded(Protocol):
    """A connection the sweeper looks after."""

    def check_deadlines(self, now: float) -> None: ...


class ListenerGuard:
    """Open connections per listening port, and the sweeper that enforces the timeouts."""

    def __init__(self, limits: ListenerLimits, counters: SecurityCounters | None = None) -> None:
        self.limits = limits
        self.counters = counters
        self.interval = sweep_interval(limits)
        self.listeners: dict[int, set[Guarded]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._refusals_logged: dict[int, float] = {}

    def admit(self, connection: Guarded, port: int, loop: asyncio.AbstractEventLoop) -> bool:
        """Count a new connection on `port`; False (and it is not counted) when the listener is full."""
        open_here = self.listeners.setdefault(port, set())
        if len(open_here) >= self.limits.max_connections:
            self._log_refusal(port)
            return False
        open_here.add(connection)
        if self._timer is None or self._timer_loop is not loop:
            self._timer_loop = loop
            self._timer = loop.call_later(self.interval, self._sweep, loop)
        return True

    def refused_head(self) -> None:
        """A head over a limit was refused (431): an input limit, as the per-MCP limits count it."""
        if self.counters is not None:
            self.counters.requests_rejected_limits += 1
            self.counters.violation()

    def release(self, connection: Guarded, port: int) -> None:
        open_here = self.listeners.get(port)
        if open_here is not None:
            open_here.discard(connection)

    def open_connections(self) -> Iterable[Guarded]:
        return [connection for open_here in self.listeners.values() for connection in open_here]

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        connections = self.open_connections()
        # Re-armed first, so one failing check never stops the timeouts; idle, it stops until the next connection.
        self._timer = loop.call_later(self.interval, self._sweep, loop) if connections else None
        now = loop.time()
        for connection in connections:
            try:
                connection.check_deadlines(now)
            except Exception as exc:  # one connection's failure must not end the sweep
                logger.error("listener: checking a connection's deadlines failed: %s", exc)

    def _log_refusal(self, port: int) -> None:
        now = time.monotonic()
        if now - self._refusals_logged.get(port, -_LOG_EVERY) >= _LOG_EVERY:
            self._refusals_logged[port] = now
            logger.warning(
                "server.limits.max_connections (%d) reached on port %d: refusing new connections with 503",
                self.limits.max_connections,
                port,
            )
