"""Where audit events go: stdout, a size-rotated JSON-lines file, syslog (RFC 5424), SQLite.

Every sink takes a batch of already-rendered events. Sinks that touch the disk do it on
their own thread, so a slow disk slows the audit queue (and, through its bound, the
requests that feed it), never the event loop itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from mcp_barbican.audit.events import rfc3339
from mcp_barbican.storage.connection import SqliteThread, connect_private

__all__ = ["FileSink", "Sink", "SqliteSink", "StdoutSink", "SyslogSink", "syslog_message"]

Record = dict[str, Any]


class Sink(Protocol):
    name: str

    async def write(self, batch: list[Record]) -> None: ...

    async def aclose(self) -> None: ...


class StdoutSink:
    name = "stdout"

    async def write(self, batch: list[Record]) -> None:
        sys.stdout.write("".join(orjson.dumps(record).decode() + "\n" for record in batch))
        sys.stdout.flush()

    async def aclose(self) -> None:
        return None


class FileSink:
    """JSON lines; past `max_bytes` the file becomes `.1` (older ones shift up to `.backups`).

    The file is written on a thread of its own, in order."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.name = f"file:{path}"
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: Any = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mcp-barbican-audit-file")

    async def write(self, batch: list[Record]) -> None:
        data = b"".join(orjson.dumps(record) + b"\n" for record in batch)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._append, data)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown()

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        if self._file.tell() and self._file.tell() + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_FACILITIES: Final = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
_NOTICE, _WARNING = 5, 4


def syslog_message(record: Record, *, facility: str, hostname: str, pid: int) -> bytes:
    """One RFC 5424 message: refused actions at warning severity, the rest at notice; JSON as MSG."""
    severity = _NOTICE if record.get("success") else _WARNING
    priority = _FACILITIES[facility] * 8 + severity
    stamp = rfc3339(time.time())
    msgid = str(record.get("type") or "-")[:32]
    header = f"<{priority}>1 {stamp} {hostname[:255] or '-'} mcp-barbican {pid} {msgid} -"
    return header.encode() + b" \xef\xbb\xbf" + orjson.dumps(record)


class SyslogSink:
    """RFC 5424 datagrams to `host:port` (UDP) or a unix datagram socket path."""

    def __init__(self, address: str, *, facility: str) -> None:
        self.name = f"syslog:{address}"
        self.facility = facility
        self.hostname = socket.gethostname()
        if address.startswith("/"):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._target: Any = address
        else:
            host, _, port = address.rpartition(":")
            info = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)[0]
            self._socket = socket.socket(info[0], socket.SOCK_DGRAM)
            self._target = info[4]

    async def write(self, batch: list[Record]) -> None:
        pid = os.getpid()
        for record in batch:
            message = syslog_message(record, facility=self.facility, hostname=self.hostname, pid=pid)
            self._socket.sendto(message, self._target)

    async def aclose(self) -> None:
        self._socket.close()


_COLUMNS: Final = ("timestamp", "type", "user", "mcp", "success")


def _connect_audit(path: Path) -> sqlite3.Connection:
    db = connect_private(path)
    try:
        db.executescript(
            """CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY, timestamp TEXT NOT NULL, type TEXT NOT NULL, user TEXT,
                 mcp TEXT, success INTEGER NOT NULL, event TEXT NOT NULL);
               CREATE INDEX IF NOT EXISTS audit_time ON audit (timestamp);
               CREATE INDEX IF NOT EXISTS audit_type ON audit (type, timestamp);"""
        )
    except BaseException:
        db.close()
        raise
    return db


class SqliteSink:
    """Events in a table with the queried fields as columns and the whole event as JSON."""

    def __init__(self, path: Path) -> None:
        self.name = f"sqlite:{path}"
        self.path = path
        self._db = SqliteThread(path, _connect_audit, what="the audit database")

    async def write(self, batch: list[Record]) -> None:
        rows = [
            (r["timestamp"], r["type"], r.get("user"), r.get("mcp"), int(bool(r["success"])), orjson.dumps(r).decode())
            for r in batch
        ]

        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT INTO audit (timestamp, type, user, mcp, success, event) VALUES (?, ?, ?, ?, ?, ?)", rows
                )

        await self._db.run(insert)

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
        """Newest first; `since`/`until` are RFC 3339 UTC strings (compared as text, which orders them)."""
        clauses, values = [], []
        for column, value, op in (
            ("type", type, "="),
            ("user", user, "="),
            ("mcp", mcp, "="),
            ("timestamp", since, ">="),
            ("timestamp", until, "<"),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT event FROM audit {where} ORDER BY id DESC LIMIT ?"  # noqa: S608 (columns are fixed above)
        rows = await self._db.run(lambda db: db.execute(sql, (*values, limit)).fetchall())
        return [orjson.loads(row[0]) for row in rows]

    async def count(self) -> int:
        row = await self._db.run(lambda db: db.execute("SELECT count(*) FROM audit").fetchone())
        return int(row[0])

    async def aclose(self) -> None:
        await self._db.aclose()
