"""Every store keeps the same promises; SQLite also keeps them across a restart."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_barbican.config import StorageConfig
from mcp_barbican.exceptions import StorageError
from mcp_barbican.security.iprules import IpRule, RuleChange
from mcp_barbican.storage import McpRecord, Storage, TokenRecord, open_storage
from mcp_barbican.storage.sqlite import SCHEMA_VERSION, SqliteStorage

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    config = StorageConfig(type=request.param, path=str(tmp_path / "state" / "state.db"))
    opened = open_storage(config)
    yield opened
    await opened.aclose()


def record(mcp_id: str, command: str = "demo") -> McpRecord:
    now = time.time()
    return McpRecord(mcp_id, {"id": mcp_id, "command": command, "env": {"KEY": "secret"}}, now, now)


async def test_mcp_registry_round_trip(store: Storage) -> None:
    assert await store.create_mcp(record("a"))
    assert not await store.create_mcp(record("a", "other")), "a second create of one id must lose"
    assert [r.definition["command"] for r in await store.mcps()] == ["demo"]
    assert await store.replace_mcp(record("a", "replaced"))
    assert not await store.replace_mcp(record("missing"))
    assert [r.definition for r in await store.mcps()] == [{"id": "a", "command": "replaced", "env": {"KEY": "secret"}}]
    assert await store.delete_mcp("a")
    assert not await store.delete_mcp("a")
    assert await store.mcps() == []


async def test_concurrent_creates_of_one_id_have_one_winner(store: Storage) -> None:
    results = await asyncio.gather(*(store.create_mcp(record("same", f"cmd{i}")) for i in range(20)))
    assert results.count(True) == 1
    (kept,) = await store.mcps()
    assert kept.definition["command"] == f"cmd{results.index(True)}"


async def test_tokens_round_trip(store: Storage) -> None:
    first = TokenRecord("t1", "ab" * 32, ("reader",), ("a", "b"), time.time() + 60, time.time(), None, "ci")
    second = TokenRecord("t2", "cd" * 32, (), None, None, time.time())
    await store.put_token(first)
    await store.put_token(second)
    assert await store.tokens() == [first, second]
    revoked = TokenRecord(
        first.id, first.sha256, first.roles, first.mcps, first.expires_at, first.created_at, time.time(), "ci"
    )
    await store.put_token(revoked)
    assert await store.tokens() == [revoked, second]
    assert not revoked.active(time.time())
    assert second.active(time.time())


async def test_ip_rules_notify_and_expire(store: Storage) -> None:
    seen: list[RuleChange] = []
    unsubscribe = store.ip_rules.subscribe(seen.append)
    now = time.time()
    lasting = IpRule.new("198.51.100.7", "deny", now=now, reason="test")
    expired = IpRule("old", "203.0.113.0/24", "deny", now - 1, "", now - 10)
    await store.ip_rules.add(lasting)
    await store.ip_rules.add(expired)
    assert [rule.id for rule in await store.ip_rules.list()] == [lasting.id]
    assert await store.ip_rules.remove(lasting.id)
    assert not await store.ip_rules.remove(lasting.id)
    unsubscribe()
    await store.ip_rules.add(IpRule.new("198.51.100.8", "allow", now=now))
    assert seen == [RuleChange(lasting.id, lasting), RuleChange("old", expired), RuleChange(lasting.id, None)]


async def test_sqlite_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "state.db"
    first = SqliteStorage(path)
    rule = IpRule.new("2001:db8::/64", "deny", now=time.time(), duration=600, reason="ban")
    token = TokenRecord("t", "ef" * 32, ("admin",), None, None, time.time())
    await first.ip_rules.add(rule)
    await first.put_token(token)
    assert await first.create_mcp(record("kept"))
    await first.aclose()

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    second = SqliteStorage(path)
    assert await second.ip_rules.list() == [rule]
    assert await second.tokens() == [token]
    assert [r.id for r in await second.mcps()] == ["kept"]
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
