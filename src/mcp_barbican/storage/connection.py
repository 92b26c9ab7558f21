"""A private SQLite database on a thread of its own, for the state store and the audit sink.

Kept apart from `sqlite.py` so that the audit sinks use the same connection handling without
the state store's tables.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from mcp_barbican.exceptions import StorageError

__all__ = ["SqliteThread", "connect_private"]

T = TypeVar("T")


def connect_private(path: Path) -> sqlite3.Connection:
    """A WAL-mode connection to a database only its owner may read (0600; a new directory 0700)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        connection.close()
        raise
    return connection


class SqliteThread:
    """One SQLite connection on a thread of its own: the loop never waits on the disk, and
    statements run one at a time, in order. Every SQLite failure is a StorageError naming `what`."""

    def __init__(self, path: Path, connect: Callable[[Path], sqlite3.Connection], *, what: str) -> None:
        self.path = path
        self.what = what
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mcp-barbican-sqlite")
        try:
            self._db = self._executor.submit(connect, path).result()
        except (OSError, sqlite3.Error) as exc:
            self._executor.shutdown()
            raise StorageError(f"cannot open {what} {path}: {exc}") from exc
        except BaseException:
            self._executor.shutdown()
            raise

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the database thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work, self._db)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.what} {self.path}: {exc}") from exc

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown()
