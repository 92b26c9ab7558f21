"""The Redis stream sink while Redis is unreachable: never waits, bounded, drops the oldest and counts them."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from mcp_barbican.audit import AuditEvent, AuditTrail
from mcp_barbican.audit.sinks import SqliteSink
from mcp_barbican.audit.stream import RedisStreamSink
from tests.proxy import free_port

pytestmark = pytest.mark.anyio


def _records(first: int, count: int) -> list[dict[str, object]]:
    return [AuditEvent("tool_call", "call", True, request_id=f"r{n}").as_dict() for n in range(first, first + count)]


async def test_an_unreachable_redis_keeps_the_newest_events_counts_the_rest_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)  # nothing listens
    sink = RedisStreamSink(client, stream="t:audit", max_len=100, max_pending=4, retry=0.05)
    trail = AuditTrail([sink])
    try:
        with caplog.at_level(logging.INFO, logger="mcp_barbican.audit.stream"):
            started = time.monotonic()
            await sink.write(_records(0, 10))
            assert time.monotonic() - started < 0.05, "writing never waits on Redis"
            await asyncio.sleep(0.3)  # several failed attempts
            await sink.write(_records(10, 3))
            await asyncio.sleep(0.2)
            assert sink.dropped == 9
            assert trail.failed == {"redis:t:audit": 9}, "drops are the sink's failures in the metrics"
            kept = [orjson.loads(event)["request_id"] for event in sink._pending]
            assert kept == ["r9", "r10", "r11", "r12"], "the newest are kept, in order"
            unreachable = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
            assert len(unreachable) == 1, "one line per outage, not per event or attempt"
            await sink.aclose()
        assert sink.dropped == 13, "what is still queued at shutdown is counted too"
        assert "4 events not written at shutdown" in caplog.text
    finally:
        await client.aclose()


async def test_admin_audit_reads_the_stream_when_both_a_stream_and_sqlite_are_configured(tmp_path: Path) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    sqlite, stream = SqliteSink(tmp_path / "audit.db"), RedisStreamSink(client, stream="s", max_len=10, max_pending=10)
    try:
        assert AuditTrail([sqlite, stream]).queryable is stream, "the stream holds every replica's events"
        assert AuditTrail([sqlite]).queryable is sqlite
        assert AuditTrail([]).queryable is None
    finally:
        await sqlite.aclose()
        await client.aclose()
