"""State in one SQLite file (the default): registrations, tokens, rules and bans survive a restart.

All SQL runs on one dedicated thread holding the one connection, so the event loop never
waits on the disk and statements never interleave. The file is created private (0600, in a
0700 directory when the directory is new): it holds the definitions of registered MCPs,
whose `env` and `headers` may carry secrets. Tokens are stored only as SHA-256 digests.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from mcp_barbican.exceptions import StorageError
from mcp_barbican.security.iprules import IpRule, RuleChange, RuleSubscribers
from mcp_barbican.storage.base import McpRecord, TokenRecord
from mcp_barbican.storage.connection import SqliteThread, connect_private

__all__ = ["SCHEMA_VERSION", "SqliteIpRuleStore", "SqliteStorage"]

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ip_rules (
    id TEXT PRIMARY KEY, cidr TEXT NOT NULL, action TEXT NOT NULL,
    expires_at REAL, reason TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mcps (
    id TEXT PRIMARY KEY, definition TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, roles TEXT NOT NULL, mcps TEXT,
    expires_at REAL, created_at REAL NOT NULL, revoked_at REAL, description TEXT NOT NULL);
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


class SqliteStorage:
    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the database at `path`; StorageError if it cannot be used."""
        self.path = path
        self._thread = SqliteThread(path, _connect, what="the state database")
        self.run = self._thread.run
        self._ip_rules = SqliteIpRuleStore(self)

    @property
    def ip_rules(self) -> SqliteIpRuleStore:
        return self._ip_rules

    async def aclose(self) -> None:
        await self._thread.aclose()

    async def mcps(self) -> builtins.list[McpRecord]:
        rows = await self.run(lambda db: db.execute("SELECT * FROM mcps ORDER BY created_at, id").fetchall())
        return [McpRecord(row[0], json.loads(row[1]), row[2], row[3]) for row in rows]

    async def create_mcp(self, record: McpRecord) -> bool:
        def insert(db: sqlite3.Connection) -> bool:
            cursor = db.execute("INSERT INTO mcps VALUES (?, ?, ?, ?) ON CONFLICT(id) DO NOTHING", _mcp_row(record))
            return cursor.rowcount == 1

        return await self.run(insert)

    async def replace_mcp(self, record: McpRecord) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            row = _mcp_row(record)
            cursor = db.execute("UPDATE mcps SET definition = ?, updated_at = ? WHERE id = ?", (row[1], row[3], row[0]))
            return cursor.rowcount == 1

        return await self.run(update)

    async def delete_mcp(self, mcp_id: str) -> bool:
        return await self.run(lambda db: db.execute("DELETE FROM mcps WHERE id = ?", (mcp_id,)).rowcount == 1)

    async def tokens(self) -> builtins.list[TokenRecord]:
        rows = await self.run(lambda db: db.execute("SELECT * FROM tokens ORDER BY created_at, id").fetchall())
        return [_token(row) for row in rows]

    async def put_token(self, record: TokenRecord) -> None:
        row = (
            record.id,
            record.sha256,
            json.dumps(list(record.roles)),
            None if record.mcps is None else json.dumps(list(record.mcps)),
            record.expires_at,
            record.created_at,
            record.revoked_at,
            record.description,
        )
        await self.run(lambda db: db.execute("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))


def _mcp_row(record: McpRecord) -> tuple[str, str, float, float]:
    return (record.id, json.dumps(record.definition), record.created_at, record.updated_at)


def _token(row: Any) -> TokenRecord:
    mcps = None if row[3] is None else tuple(json.loads(row[3]))
    return TokenRecord(row[0], row[1], tuple(json.loads(row[2])), mcps, row[4], row[5], row[6], row[7])


class SqliteIpRuleStore:
    """Dynamic rules and bans in the state database; changes reach this process's subscribers at once."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = storage
        self._subscribers = RuleSubscribers()

    async def add(self, rule: IpRule) -> None:
        row = (rule.id, rule.cidr, rule.action, rule.expires_at, rule.reason, rule.created_at)
        await self._storage.run(lambda db: db.execute("INSERT OR REPLACE INTO ip_rules VALUES (?, ?, ?, ?, ?, ?)", row))
        self._subscribers.notify(RuleChange(rule.id, rule))

    async def remove(self, rule_id: str) -> bool:
        removed = await self._storage.run(
            lambda db: db.execute("DELETE FROM ip_rules WHERE id = ?", (rule_id,)).rowcount == 1
        )
        if removed:
            self._subscribers.notify(RuleChange(rule_id, None))
        return removed

    async def list(self) -> builtins.list[IpRule]:
        """The rules not yet expired; expired ones are deleted on the way."""
        now = time.time()

        def live(db: sqlite3.Connection) -> builtins.list[Any]:
            db.execute("DELETE FROM ip_rules WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            return db.execute("SELECT * FROM ip_rules ORDER BY created_at, id").fetchall()

        rows = await self._storage.run(live)
        return [IpRule(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows]

    def subscribe(self, listener: Callable[[RuleChange], None]) -> Callable[[], None]:
        return self._subscribers.subscribe(listener)
