"""Event streams: cursor reads, bounded memory, waking readers, persistent streams."""

from __future__ import annotations

import asyncio

import pytest

from mcp_barbican.server.streams import MAX_EVENTS, EventStream, encode_event, priming_event


def test_readers_get_events_from_their_cursor() -> None:
    stream = EventStream("3")
    stream.push(b'{"a":1}')
    stream.push(b'{"b":2}', final=True)
    events, cursor = stream.read_from(1)
    assert events == [encode_event("3-1", b'{"a":1}'), encode_event("3-2", b'{"b":2}')]
    assert cursor == 3 and stream.done
    assert stream.read_from(2)[0] == [encode_event("3-2", b'{"b":2}')]
    stream.push(b"late")
    assert stream.next_seq == 3  # nothing is added after the end


def test_memory_is_bounded_and_old_events_are_skipped() -> None:
    stream = EventStream("0")
    for i in range(MAX_EVENTS + 10):
        stream.push(str(i).encode())
    events, cursor = stream.read_from(1)
    assert len(events) == MAX_EVENTS
    assert events[0] == encode_event(f"0-{11}", b"10")
    assert cursor == MAX_EVENTS + 11


def test_a_persistent_stream_survives_final_answers_but_not_close() -> None:
    stream = EventStream("0", persistent=True)
    stream.push(b"answer", final=True)
    stream.finish()
    assert not stream.done
    stream.close()
    assert stream.done


def test_the_priming_event_has_an_id_a_retry_and_no_data() -> None:
    assert priming_event("4-0") == b"id: 4-0\nretry: 1000\ndata: \n\n"


@pytest.mark.anyio
async def test_a_waiting_reader_wakes_on_push() -> None:
    stream = EventStream("1")
    waiter = stream.waiter(1)
    assert not waiter.done()
    asyncio.get_running_loop().call_soon(stream.push, b"x")
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(stream.wait(2, timeout=0.05), 1)  # times out quietly
