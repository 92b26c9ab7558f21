"""Keys ordered by expiry time, for the in-process tables that drop records when their time comes."""

from __future__ import annotations

import heapq
import itertools

__all__ = ["ExpiryQueue"]


class ExpiryQueue:
    """Keys by expiry, soonest first: O(log n) to add, pop or replace a key.

    A replaced or discarded key leaves a stale heap entry behind, skipped when it surfaces and
    compacted away when stale entries outnumber live ones. `heap[0][0]` is the next expiry (or
    a stale one, which is never later): callers on a hot path compare it inline before calling.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, str]] = []
        self._live: dict[str, int] = {}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def push(self, key: str, expires_at: float) -> None:
        """Expire `key` at `expires_at` (replacing any earlier expiry of it)."""
        sequence = next(self._sequence)
        self._live[key] = sequence
        heapq.heappush(self.heap, (expires_at, sequence, key))

    def discard(self, key: str) -> None:
        if self._live.pop(key, None) is not None and len(self.heap) > 2 * len(self._live) + 64:
            self.heap = [entry for entry in self.heap if self._live.get(entry[2]) == entry[1]]
            heapq.heapify(self.heap)

    def pop_due(self, now: float) -> list[str]:
        """The keys expired at `now`, removed from the queue."""
        due: list[str] = []
        while self.heap and self.heap[0][0] <= now:
            key = self._pop_live()
            if key is not None:
                due.append(key)
        return due

    def pop_soonest(self) -> str | None:
        """The key that expires first, removed from the queue; None if no key expires."""
        while self.heap:
            key = self._pop_live()
            if key is not None:
                return key
        return None

    def _pop_live(self) -> str | None:
        _, sequence, key = heapq.heappop(self.heap)
        if self._live.get(key) != sequence:
            return None
        del self._live[key]
        return key
