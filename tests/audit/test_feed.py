"""The live event feed: which events it keeps, bounded readers, listeners that cannot break it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mcp_barbican.audit import AuditEvent, AuditTrail, EventFeed, is_security_event

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("type_", "success", "kept"),
    [
        ("authentication", True, False),
        ("authentication", False, True),
        ("tool_call", True, False),
        ("tool_call", False, True),
        ("ban", True, True),
        ("rate_limit", False, True),
        ("ip_block", False, True),
        ("admin", True, True),
        ("integrity", True, True),
        ("token", True, True),
        ("egress", False, True),
        ("config_reload", True, True),
    ],
)
def test_which_events_are_security_events(type_: str, success: bool, kept: bool) -> None:
    assert is_security_event({"type": type_, "success": success}) is kept


def record(i: int, type_: str = "ban", success: bool = True) -> dict[str, Any]:
    return {"type": type_, "success": success, "action": f"a{i}"}


async def test_routine_successes_are_not_kept_and_ids_count_what_is() -> None:
    feed = EventFeed()
    await feed.write([record(1), record(2, "tool_call"), record(3, "authentication", False)])
    assert [(r["id"], r["action"]) for r in feed.recent] == [(1, "a1"), (2, "a3")]


async def test_the_backlog_is_bounded() -> None:
    feed = EventFeed(backlog=3)
    await feed.write([record(i) for i in range(10)])
    assert [r["action"] for r in feed.recent] == ["a7", "a8", "a9"]


async def test_a_slow_reader_loses_its_oldest_events_and_counts_them() -> None:
    feed = EventFeed(subscriber_capacity=2)
    fast, slow = feed.subscribe(), feed.subscribe()
    assert fast is not None and slow is not None
    await feed.write([record(0)])
    assert (await fast.get())["action"] == "a0"
    await feed.write([record(i) for i in range(1, 5)])
    assert [r["action"] for r in slow.drain()] == ["a3", "a4"]
    assert slow.dropped == 3
    assert fast.dropped == 2


async def test_a_reader_waits_for_the_next_event_and_ends_when_the_feed_closes() -> None:
    feed = EventFeed()
    reader = feed.subscribe()
    assert reader is not None
    waiting = asyncio.ensure_future(reader.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await feed.write([record(1)])
    assert (await asyncio.wait_for(waiting, 1))["action"] == "a1"
    pending = asyncio.ensure_future(reader.get())
    await feed.aclose()
    with pytest.raises(EOFError):
        await asyncio.wait_for(pending, 1)
    assert feed.subscribers == 0


async def test_readers_are_bounded_and_a_closed_one_frees_its_place() -> None:
    feed = EventFeed(max_subscribers=2)
    async with feed.subscription() as first, feed.subscription() as second:
        assert first is not None and second is not None
        async with feed.subscription() as third:
            assert third is None
    assert feed.subscribers == 0
    async with feed.subscription() as again:
        assert again is not None


async def test_a_failing_listener_is_logged_in_one_line_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = EventFeed()
    heard: list[str] = []

    def broken(_record: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    feed.listeners += [broken, lambda r: heard.append(r["action"])]
    with caplog.at_level(logging.ERROR):
        await feed.write([record(1)])
    assert heard == ["a1"]
    assert "an event listener failed on a ban event" in caplog.text
    assert "Traceback" not in caplog.text


async def test_the_trail_hands_its_events_to_the_feed() -> None:
    feed = EventFeed()
    trail = AuditTrail([feed])
    trail.start()
    reader = feed.subscribe()
    assert reader is not None
    await trail.emit(AuditEvent("authentication", "authenticate", True))
    await trail.emit(AuditEvent("ban", "ban.added", True, resource="192.0.2.7"))
    got = await asyncio.wait_for(reader.get(), 2)
    await trail.aclose()
    assert (got["type"], got["resource"]) == ("ban", "192.0.2.7")
    assert list(reader.drain()) == []
