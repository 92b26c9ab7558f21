"""The SQLite store keeps its state across a restart, in a private file (the shared promises: test_contract.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from mcp_barbican.config import StorageConfig
from mcp_barbican.exceptions import StorageError
from mcp_barbican.security.iprules import new_rule
from mcp_barbican.storage import McpRecord, TokenRecord, open_storage
from mcp_barbican.storage.memory import MemoryStorage
from mcp_barbican.storage.sqlite import SCHEMA_VERSION, SqliteStorage

pytestmark = pytest.mark.anyio


async def test_open_storage_picks_the_configured_backend(tmp_path: Path) -> None:
    assert isinstance(open_storage(StorageConfig(type="memory")), MemoryStorage)
    sqlite = open_storage(StorageConfig(type="sqlite", path=str(tmp_path / "state.db")))
    assert isinstance(sqlite, SqliteStorage)
    await sqlite.aclose()


def record(mcp_id: str, command: str = "demo") -> McpRecord:
    now = time.time()
    return McpRecord(mcp_id, {"id": mcp_id, "command": command, "env": {"KEY": "secret"}}, now, now)


async def test_sqlite_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "state.db"
    first = SqliteStorage(path)
    rule = new_rule("2001:db8::/64", "deny", now=time.time(), duration=600, reason="ban")
    token = TokenRecord("t", "ef" * 32, ("admin",), None, None, time.time())
    await first.rules.put(rule)
    await first.tokens.put(token)
    assert await first.mcps.create(record("kept"))
    await first.aclose()

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    second = SqliteStorage(path)
    assert await second.rules.list() == [rule]
    assert await second.tokens.list() == [token]
    assert [r.id for r in await second.mcps.list()] == ["kept"]
    await second.aclose()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer mcp-barbican"):
        SqliteStorage(path)


def test_sqlite_reports_an_unusable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the state database"):
        SqliteStorage(blocker / "state.db")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="cannot open the state database"):
        SqliteStorage(corrupt)
