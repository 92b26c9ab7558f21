"""The audit pipeline: every event reaches every working sink, failures are counted, nothing waits forever."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mcp_barbican.audit import AuditEvent, AuditTrail, arguments_for_audit

pytestmark = pytest.mark.anyio


class Collecting:
    def __init__(self, name: str = "collect", delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.records: list[dict[str, Any]] = []
        self.closed = False

    async def write(self, batch: list[dict[str, Any]]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.records += batch

    async def aclose(self) -> None:
        self.closed = True


class Broken(Collecting):
    async def write(self, batch: list[dict[str, Any]]) -> None:
        raise OSError("disk full")


def event(i: int) -> AuditEvent:
    return AuditEvent("authentication", "authenticate", i % 2 == 0, request_id=str(i))


async def test_every_event_reaches_the_working_sinks_and_failures_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    good, other, broken = Collecting("good"), Collecting("other"), Broken("broken")
    trail = AuditTrail([good, broken, other], queue_size=50)
    trail.start()
    with caplog.at_level(logging.ERROR):
        await asyncio.gather(*(trail.emit(event(i)) for i in range(1000)))
        await trail.aclose()
    for sink in (good, other):
        assert sorted(int(r["request_id"]) for r in sink.records) == list(range(1000))
        assert sink.closed
    assert trail.failed == {"good": 0, "broken": 1000, "other": 0}
    assert "audit sink broken failed" in caplog.text
    assert len([r for r in caplog.records if "audit sink broken" in r.message]) <= 2  # rate-limited


async def test_a_full_queue_applies_backpressure_instead_of_dropping() -> None:
    slow = Collecting(delay=0.01)
    trail = AuditTrail([slow], queue_size=2)
    trail.start()
    emitters = [asyncio.ensure_future(trail.emit(event(i))) for i in range(50)]
    await asyncio.sleep(0)
    assert not all(e.done() for e in emitters), "producers wait while the queue is full"
    for i in range(50, 60):
        trail.emit_soon(event(i))
    await asyncio.gather(*emitters)
    await trail.aclose()
    assert sorted(int(r["request_id"]) for r in slow.records) == list(range(60))


async def test_the_writer_wakes_for_events_after_it_went_idle() -> None:
    sink = Collecting()
    trail = AuditTrail([sink])
    trail.start()
    for i in range(3):
        await trail.emit(event(i))
        await asyncio.sleep(0.1)  # past the linger: the batch is written and the writer waits again
        assert len(sink.records) == i + 1, "each event is written without waiting for the next"
    await asyncio.wait_for(trail.aclose(), 1)  # nothing left to drain: closes at once
    assert trail.written == 3


async def test_without_sinks_nothing_is_queued() -> None:
    trail = AuditTrail([])
    trail.start()
    await trail.emit(event(1))
    trail.emit_soon(event(2))
    await trail.aclose()
    assert trail.written == 0


def test_the_record_carries_the_seed_fields() -> None:
    record = AuditEvent("tool_call", "tools/call", True, "tool:demo/echo", user="token:ci").as_dict()
    for name in ("timestamp", "type", "source", "user", "action", "resource", "success", "error"):
        assert name in record
    for name in ("remote_addr", "user_agent", "request_id", "session_id"):
        assert name in record
    assert record["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("redact", {"path": "[redacted]", "token": "[redacted]"}),
        ("hash", {}),
        ("keep", {"path": "/etc", "token": "x"}),
    ],
)
def test_arguments_are_kept_as_configured(mode: str, expected: dict[str, str]) -> None:
    kept = arguments_for_audit({"token": "x", "path": "/etc"}, mode)
    if mode == "hash":
        assert set(kept) == {"sha256"}
        assert len(kept["sha256"]) == 64
        assert kept == arguments_for_audit({"path": "/etc", "token": "x"}, mode), "key order does not matter"
    else:
        assert kept == expected
