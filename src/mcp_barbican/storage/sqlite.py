"""State in one SQLite file (the default): registrations, tokens, rules and bans survive a restart.

All SQL runs on one dedicated thread holding the one connection (`connection.SqliteThread`),
so the event loop never waits on the disk and statements never interleave: each write is
atomic for this process. One process owns the file; replicas share state through Redis. The
file is created private (0600, in a 0700 directory when the directory is new): it holds the
definitions of registered MCPs, whose `env` and `headers` may carry secrets. Tokens are
stored only as SHA-256 digests. Changes are told to this process's subscribers right after
each write.

Rate-limit buckets are not in the file: they stay in process memory (`MemoryBucketStore`),
like nginx's and Envoy's local limits, since a local limiter's state need not survive a restart.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic

from mcp_barbican.exceptions import StorageError
from mcp_barbican.storage.buckets import DEFAULT_MAX_KEYS, LocalBuckets, MemoryBucketStore
from mcp_barbican.storage.connection import SqliteThread, connect_private
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

__all__ = ["SCHEMA_VERSION", "SqliteStorage", "SqliteTable"]

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ip_rules (
    id TEXT PRIMARY KEY, cidr TEXT NOT NULL, action TEXT NOT NULL,
    expires_at REAL, reason TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ip_rules_expiry ON ip_rules (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS mcps (
    id TEXT PRIMARY KEY, definition TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, roles TEXT NOT NULL, mcps TEXT,
    expires_at REAL, created_at REAL NOT NULL, revoked_at REAL, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pins (id TEXT PRIMARY KEY, mcp TEXT NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL);
"""


def _connect(path: Path) -> sqlite3.Connection:
    connection = connect_private(path)
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(f"{path} was written by a newer mcp-barbican (schema {version} > {SCHEMA_VERSION})")
        connection.executescript(_SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        connection.close()
        raise
    return connection


@dataclass(frozen=True)
class Codec(Generic[R]):
    """How one kind of record maps to the columns of its SQL table (the id first)."""

    sql_table: str
    columns: tuple[str, ...]
    to_row: Callable[[R], tuple[Any, ...]]
    from_row: Callable[[Any], R]


def _json_tuple(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


_MCPS: Final[Codec[McpRecord]] = Codec(
    "mcps",
    ("id", "definition", "created_at", "updated_at"),
    lambda r: (r.id, json.dumps(r.definition), r.created_at, r.updated_at),
    lambda row: McpRecord(row[0], json.loads(row[1]), row[2], row[3]),
)
_TOKENS: Final[Codec[TokenRecord]] = Codec(
    "tokens",
    ("id", "sha256", "roles", "mcps", "expires_at", "created_at", "revoked_at", "description"),
    lambda r: (
        r.id,
        r.sha256,
        json.dumps(list(r.roles)),
        None if r.mcps is None else json.dumps(list(r.mcps)),
        r.expires_at,
        r.created_at,
        r.revoked_at,
        r.description,
    ),
    lambda row: TokenRecord(row[0], row[1], tuple(json.loads(row[2])), _json_tuple(row[3]), *row[4:8]),
)
_RULES: Final[Codec[IpRule]] = Codec(
    "ip_rules",
    ("id", "cidr", "action", "expires_at", "reason", "created_at"),
    lambda r: (r.id, r.cidr, r.action, r.expires_at, r.reason, r.created_at),
    lambda row: IpRule(*row[:6]),
)


_PIN_BODY: Final = tuple(f.name for f in dataclasses.fields(PinRecord) if f.name not in ("id", "mcp", "created_at"))


def _pin_row(record: PinRecord) -> tuple[Any, ...]:
    body = {name: getattr(record, name) for name in _PIN_BODY}
    return (record.id, record.mcp, json.dumps(body, separators=(",", ":")), record.created_at)


_PINS: Final[Codec[PinRecord]] = Codec(
    "pins",
    ("id", "mcp", "body", "created_at"),
    _pin_row,
    lambda row: PinRecord(row[0], row[1], created_at=row[3], **json.loads(row[2])),
)


class SqliteTable(Generic[R]):
    """A `Table` in one SQL table; each method is one call on the database thread."""

    def __init__(self, name: TableName, codec: Codec[R], thread: SqliteThread) -> None:
        self.name: TableName = name
        self.codec = codec
        self.run = thread.run
        self._subscribers: Subscribers[R] = Subscribers()
        table, columns = codec.sql_table, codec.columns
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        updated = ", ".join(f"{c} = ?" for c in columns if c not in ("id", "created_at"))
        self._select = f"SELECT {names} FROM {table}"  # noqa: S608 -- names from the codecs above, not input
        self._insert = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        self._upsert = f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        self._update = f"UPDATE {table} SET {updated} WHERE id = ?"  # noqa: S608
        self._delete = f"DELETE FROM {table} WHERE id = ?"  # noqa: S608

    async def list(self) -> builtins.list[R]:
        rows = await self.run(lambda db: db.execute(f"{self._select} ORDER BY created_at, id").fetchall())
        return [self.codec.from_row(row) for row in rows]

    async def get(self, record_id: str) -> R | None:
        row = await self.run(lambda db: db.execute(f"{self._select} WHERE id = ?", (record_id,)).fetchone())
        return None if row is None else self.codec.from_row(row)

    async def put(self, record: R) -> None:
        row = self.codec.to_row(record)
        await self.run(lambda db: db.execute(self._upsert, row))
        self._told(record.id, record)

    async def create(self, record: R) -> bool:
        row = self.codec.to_row(record)
        inserted = await self.run(lambda db: db.execute(f"{self._insert} ON CONFLICT(id) DO NOTHING", row).rowcount)
        if inserted != 1:
            return False
        self._told(record.id, record)
        return True

    async def replace(self, record: R) -> bool:
        row = dict(zip(self.codec.columns, self.codec.to_row(record), strict=True))
        values = (*(v for c, v in row.items() if c not in ("id", "created_at")), record.id)

        def update(db: sqlite3.Connection) -> Any:
            if db.execute(self._update, values).rowcount != 1:
                return None
            return db.execute(f"{self._select} WHERE id = ?", (record.id,)).fetchone()

        stored = await self.run(update)
        if stored is None:
            return False
        self._told(record.id, self.codec.from_row(stored))
        return True

    async def delete(self, record_id: str) -> bool:
        if await self.run(lambda db: db.execute(self._delete, (record_id,)).rowcount) != 1:
            return False
        self._told(record_id, None)
        return True

    def subscribe(self, listener: Listener[R]) -> Unsubscribe:
        return self._subscribers.subscribe(listener)

    def _told(self, record_id: str, record: R | None) -> None:
        self._subscribers.notify(Change(self.name, record_id, record))


class SqliteRuleTable(SqliteTable[IpRule]):
    """The rules table: expired rules are deleted on the way, and it holds at most `max_rules`
    (expired rules go first, then the one closest to expiry, told as a deletion; permanent rules
    are never evicted, so a table full of them refuses a new one with RuleTableFull)."""

    def __init__(self, thread: SqliteThread, *, max_rules: int, clock: Callable[[], float]) -> None:
        super().__init__("rules", _RULES, thread)
        self.max_rules = max_rules
        self.clock = clock
        self._purge = "DELETE FROM ip_rules WHERE expires_at IS NOT NULL AND expires_at <= ?"

    async def list(self) -> builtins.list[IpRule]:
        now = self.clock()

        def live(db: sqlite3.Connection) -> builtins.list[Any]:
            db.execute(self._purge, (now,))
            return db.execute(f"{self._select} ORDER BY created_at, id").fetchall()

        return [self.codec.from_row(row) for row in await self.run(live)]

    async def get(self, record_id: str) -> IpRule | None:
        rule = await super().get(record_id)
        return None if rule is None or rule.expired(self.clock()) else rule

    async def replace(self, record: IpRule) -> bool:
        now = self.clock()
        await self.run(lambda db: db.execute(self._purge, (now,)))  # an expired rule is a missing one
        return await super().replace(record)

    async def put(self, record: IpRule) -> None:
        await self._write(record, create=False)

    async def create(self, record: IpRule) -> bool:
        return await self._write(record, create=True)

    async def _write(self, record: IpRule, *, create: bool) -> bool:
        now = self.clock()
        row = self.codec.to_row(record)

        def write(db: sqlite3.Connection) -> tuple[bool, str | None]:
            existing = db.execute(f"{self._select} WHERE id = ?", (record.id,)).fetchone()
            if existing is not None and create and not self.codec.from_row(existing).expired(now):
                return False, None
            if record.expired(now):  # told, never kept: a follower drops it as expired too
                db.execute(self._delete, (record.id,))
                return True, None
            evicted = self._make_room(db, now) if existing is None else None
            db.execute(self._upsert, row)
            return True, evicted

        written, evicted = await self.run(write)
        if evicted is not None:
            self._told(evicted, None)
        if written:
            self._told(record.id, record)
        return written

    def _make_room(self, db: sqlite3.Connection, now: float) -> str | None:
        """Room for one more rule: the id of the live rule evicted for it, if one had to be."""
        if db.execute("SELECT COUNT(*) FROM ip_rules").fetchone()[0] < self.max_rules:
            return None
        if db.execute(self._purge, (now,)).rowcount:
            return None
        soonest = db.execute(
            "SELECT id FROM ip_rules WHERE expires_at IS NOT NULL ORDER BY expires_at, id LIMIT 1"
        ).fetchone()
        if soonest is None:
            raise RuleTableFull(f"{self.max_rules} permanent dynamic rules already; remove some first")
        db.execute(self._delete, (soonest[0],))
        return str(soonest[0])


class SqliteStorage:
    def __init__(
        self, path: Path, *, max_rules: int = DEFAULT_MAX_RULES, clock: Callable[[], float] = time.time
    ) -> None:
        """Open (creating if needed) the database at `path`; StorageError if it cannot be used."""
        self.path = path
        self._thread = SqliteThread(path, _connect, what="the state database")
        self.mcps: SqliteTable[McpRecord] = SqliteTable("mcps", _MCPS, self._thread)
        self.tokens: SqliteTable[TokenRecord] = SqliteTable("tokens", _TOKENS, self._thread)
        self.rules = SqliteRuleTable(self._thread, max_rules=max_rules, clock=clock)
        self.pins: SqliteTable[PinRecord] = SqliteTable("pins", _PINS, self._thread)
        self._buckets = LocalBuckets()
        self.health = StoreHealth()  # in-process: always up

    def buckets(self, namespace: str, *, max_keys: int = DEFAULT_MAX_KEYS) -> MemoryBucketStore:
        return self._buckets.get(namespace, max_keys=max_keys)

    async def aclose(self) -> None:
        await self._thread.aclose()
