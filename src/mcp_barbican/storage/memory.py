"""State in process memory: nothing survives a restart (tests and throwaway runs)."""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Callable
from typing import Generic

from mcp_barbican.storage.buckets import DEFAULT_MAX_KEYS, LocalBuckets, MemoryBucketStore
from mcp_barbican.storage.expiry import ExpiryQueue
from mcp_barbican.storage.health import StoreHealth
from mcp_barbican.storage.notices import Listener, Subscribers, Unsubscribe
from mcp_barbican.storage.records import (
    DEFAULT_MAX_RULES,
    Change,
    IpRule,
    McpRecord,
    PinRecord,
    R,
    RuleTableFull,
    TableName,
    TokenRecord,
)

__all__ = ["MemoryRuleTable", "MemoryStorage", "MemoryTable"]


def _order(record: R) -> tuple[float, str]:
    return (record.created_at, record.id)


class MemoryTable(Generic[R]):
    """A `Table` in a dict: every write is one step of the event loop, so atomic."""

    def __init__(self, name: TableName) -> None:
        self.name: TableName = name
        self._records: dict[str, R] = {}
        self._subscribers: Subscribers[R] = Subscribers()

    def __len__(self) -> int:
        return len(self._records)

    async def list(self) -> builtins.list[R]:
        return sorted(self._live(), key=_order)

    async def get(self, record_id: str) -> R | None:
        return self._records.get(record_id)

    async def put(self, record: R) -> None:
        self._store(record)

    async def create(self, record: R) -> bool:
        if await self.get(record.id) is not None:
            return False
        self._store(record)
        return True

    async def replace(self, record: R) -> bool:
        old = await self.get(record.id)
        if old is None:
            return False
        self._store(dataclasses.replace(record, created_at=old.created_at))  # type: ignore[type-var]
        return True

    async def delete(self, record_id: str) -> bool:
        if self._records.pop(record_id, None) is None:
            return False
        self._told(record_id, None)
        return True

    def subscribe(self, listener: Listener[R]) -> Unsubscribe:
        return self._subscribers.subscribe(listener)

    def _live(self) -> builtins.list[R]:
        return list(self._records.values())

    def _store(self, record: R) -> None:
        self._records[record.id] = record
        self._told(record.id, record)

    def _told(self, record_id: str, record: R | None) -> None:
        self._subscribers.notify(Change(self.name, record_id, record))


class MemoryRuleTable(MemoryTable[IpRule]):
    """The rules table, bounded: expired rules go first, then the one closest to expiry (told as a
    deletion); permanent rules are never evicted, so a table full of them refuses a new one."""

    def __init__(self, *, max_rules: int = DEFAULT_MAX_RULES, clock: Callable[[], float] = time.time) -> None:
        super().__init__("rules")
        self.max_rules = max_rules
        self.clock = clock
        self._expiry = ExpiryQueue()

    async def get(self, record_id: str) -> IpRule | None:
        self._sweep()
        return self._records.get(record_id)

    async def delete(self, record_id: str) -> bool:
        self._expiry.discard(record_id)
        return await super().delete(record_id)

    def _live(self) -> builtins.list[IpRule]:
        self._sweep()
        return super()._live()

    def _store(self, record: IpRule) -> None:
        self._sweep()
        self._expiry.discard(record.id)
        if record.expired(self.clock()):  # told, never kept: a follower drops it as expired too
            self._records.pop(record.id, None)
            self._told(record.id, record)
            return
        if record.id not in self._records and len(self._records) >= self.max_rules:
            evicted = self._expiry.pop_soonest()
            if evicted is None:
                raise RuleTableFull(f"{self.max_rules} permanent dynamic rules already; remove some first")
            del self._records[evicted]
            self._told(evicted, None)
        if record.expires_at is not None:
            self._expiry.push(record.id, record.expires_at)
        super()._store(record)

    def _sweep(self) -> None:
        for rule_id in self._expiry.pop_due(self.clock()):
            del self._records[rule_id]


class MemoryStorage:
    def __init__(self, *, max_rules: int = DEFAULT_MAX_RULES, clock: Callable[[], float] = time.time) -> None:
        self.mcps: MemoryTable[McpRecord] = MemoryTable("mcps")
        self.tokens: MemoryTable[TokenRecord] = MemoryTable("tokens")
        self.rules = MemoryRuleTable(max_rules=max_rules, clock=clock)
        self.pins: MemoryTable[PinRecord] = MemoryTable("pins")
        self._buckets = LocalBuckets()
        self.health = StoreHealth()  # in-process: always up

    def buckets(self, namespace: str, *, max_keys: int = DEFAULT_MAX_KEYS) -> MemoryBucketStore:
        return self._buckets.get(namespace, max_keys=max_keys)

    async def aclose(self) -> None:
        return None
