"""Each sink on its own: file rotation, RFC 5424 syslog over UDP and a unix socket, SQLite queries."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from mcp_barbican.audit import AuditEvent
from mcp_barbican.audit.sinks import FileSink, SqliteSink, SyslogSink, syslog_message

pytestmark = pytest.mark.anyio


def records(n: int, **fields: object) -> list[dict[str, object]]:
    return [
        {**AuditEvent("authentication", "authenticate", True, request_id=str(i)).as_dict(), **fields} for i in range(n)
    ]


async def test_file_sink_rotates_by_size_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    sink = FileSink(path, max_bytes=2000, backups=2)
    for start in range(0, 60, 6):
        await sink.write(records(6, user=f"u{start}"))
    await sink.aclose()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        assert (path.parent / name).stat().st_size <= 2000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for name in reversed(files) for line in (path.parent / name).read_text().splitlines()]
    assert lines[-1]["user"] == "u54"  # the newest is in the live file, whole lines only


async def test_syslog_sink_sends_rfc5424_over_udp_and_unix(tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = str(tmp_path / "log.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix.bind(unix_path)
    for address, server in ((f"127.0.0.1:{udp.getsockname()[1]}", udp), (unix_path, unix)):
        sink = SyslogSink(address, facility="auth")
        await sink.write(records(1) + records(1, success=False))
        await sink.aclose()
        ok, refused = server.recv(65536), server.recv(65536)
        assert re.match(rb"<37>1 \d{4}-\d\d-\d\dT[\d:.]+Z \S+ mcp-barbican \d+ authentication - \xef\xbb\xbf\{", ok)
        assert refused.startswith(b"<36>1 ")  # auth (4) * 8 + warning (4)
        assert json.loads(ok.split(b"\xef\xbb\xbf", 1)[1])["action"] == "authenticate"
    udp.close()
    unix.close()


def test_syslog_priority_follows_the_facility() -> None:
    message = syslog_message({"type": "ban", "success": True}, facility="local7", hostname="h", pid=1)
    assert message.startswith(b"<189>1 ")  # 23 * 8 + 5


async def test_sqlite_sink_answers_queries_newest_first(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "audit.db")
    await sink.write(records(3, user="token:a", mcp="demo"))
    await sink.write(records(2, user="token:b", mcp="other", type="rate_limit"))
    assert await sink.count() == 5
    newest = await sink.query(limit=1)
    assert newest[0]["user"] == "token:b"
    assert [e["request_id"] for e in await sink.query(user="token:a")] == ["2", "1", "0"]
    assert len(await sink.query(type="rate_limit")) == 2
    assert len(await sink.query(mcp="demo", type="rate_limit")) == 0
    assert await sink.query(since="2999-01-01T00:00:00.000000Z") == []
    assert len(await sink.query(until="2999-01-01T00:00:00.000000Z")) == 5
    await sink.aclose()
    assert stat.S_IMODE(os.stat(tmp_path / "audit.db").st_mode) == 0o600
