"""The audit trail on a Redis stream: one event per request across replicas, none lost or doubled by an outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from mcp_barbican.audit import AuditEvent
from mcp_barbican.audit import stream as stream_module
from mcp_barbican.audit.stream import RedisStreamSink
from tests.proxy import RunningProxy, demo_mcp, free_port, run_proxy, traceback_in
from tests.server.test_endpoint import MCP_HEADERS, initialize, sse_messages
from tests.storage.redis_server import redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ADMIN_TOKEN = "admin-token-0123456789abcdef"
STREAM = "barbican:audit"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _server(url: str, admin_port: int) -> dict[str, Any]:
    return {
        "storage": {"type": "redis", "url": url},
        "admin": {"port": admin_port, "token": ADMIN_TOKEN},
        "audit": {"sinks": [{"type": "redis"}]},
    }


def _tool_calls(url: str) -> Counter[str]:
    """How many `tool_call` events the stream holds per request id."""
    with redis.Redis.from_url(url) as client:
        entries = client.xrange(STREAM)
    events = [orjson.loads(fields[b"event"]) for _, fields in entries]
    return Counter(event["request_id"] for event in events if event["type"] == "tool_call")


async def _until_calls(url: str, wanted: set[str], seconds: float = 15.0) -> Counter[str]:
    """The stream's tool calls once it holds every id in `wanted` (or after `seconds`), then a moment later."""
    deadline = time.monotonic() + seconds
    while not wanted <= set(held := _tool_calls(url)) and time.monotonic() < deadline:  # noqa: ASYNC110 -- polls Redis
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # anything written twice would show by now
    return _tool_calls(url) if wanted <= set(held) else held


class Caller:
    """Tool calls on one replica's session, each with its own X-Request-Id."""

    def __init__(self, proxy: RunningProxy) -> None:
        self.proxy = proxy
        self.session = initialize(proxy)

    async def call(self, http: httpx2.AsyncClient, request_id: str) -> int:
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
        headers = {**MCP_HEADERS, "Mcp-Session-Id": self.session, "X-Request-Id": request_id}
        answer = await http.post(self.proxy.url("demo"), headers=headers, json=body)
        if answer.status_code == 200:
            assert "result" in sse_messages(answer.text)[0], answer.text
        return answer.status_code


@contextlib.contextmanager
def _replicas(url: str, tmp_path: Path, names: tuple[str, ...]) -> Iterator[list[tuple[RunningProxy, int]]]:
    with contextlib.ExitStack() as stack:
        started = []
        for name in names:
            directory = tmp_path / name
            directory.mkdir()
            admin_port = free_port()
            proxy = stack.enter_context(run_proxy(directory, [demo_mcp()], server=_server(url, admin_port)))
            started.append((proxy, admin_port))
        yield started


async def test_the_stream_holds_one_tool_call_event_per_request_across_two_replicas(tmp_path: Path) -> None:
    calls = 40
    with redis_server() as url, _replicas(url, tmp_path, ("a", "b")) as started:
        callers = [Caller(proxy) for proxy, _ in started]
        wanted = {f"call-{n}" for n in range(calls)}
        async with httpx2.AsyncClient(timeout=30) as http:
            statuses = await asyncio.gather(*(callers[n % 2].call(http, f"call-{n}") for n in range(calls)))
            assert statuses == [200] * calls
            held = await _until_calls(url, wanted)
            assert held == Counter(wanted), "exactly one tool_call event per request, both replicas' in one stream"
            for _, admin_port in started:  # every replica's /admin/audit reads the one stream
                listed = await http.get(
                    f"http://127.0.0.1:{admin_port}/admin/audit?type=tool_call&limit=1000",
                    headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                assert listed.status_code == 200, listed.text
                assert sorted(e["request_id"] for e in listed.json()["events"]) == sorted(wanted)


async def test_the_stream_holds_one_tool_call_event_per_request_across_two_workers(tmp_path: Path) -> None:
    """A stdio session lives in one worker: calls the other worker takes reach it through the tunnel, audited once."""
    calls = 40
    admin_port = free_port()
    with redis_server() as url, run_proxy(tmp_path, [demo_mcp()], server=_server(url, admin_port), workers=2) as proxy:
        caller = Caller(proxy)
        wanted = {f"call-{n}" for n in range(calls)}
        fresh = httpx2.Limits(max_keepalive_connections=0)  # a new connection per call: either worker takes it
        async with httpx2.AsyncClient(timeout=30, limits=fresh) as http:
            statuses = []
            for n in range(calls):
                statuses.append(await caller.call(http, f"call-{n}"))
                await asyncio.sleep(0.005)
            assert statuses == [200] * calls
            held = await _until_calls(url, wanted)
            forwarded: dict[int, int] = {}
            for _ in range(200):  # each worker's count, asked on new connections until both answered
                metrics = (await http.get(f"http://127.0.0.1:{admin_port}/admin/metrics", headers=ADMIN)).json()
                forwarded[metrics["worker"]] = metrics["session_forwards"]["forwarded"]
                if len(forwarded) == 2:
                    break
        assert held == Counter(wanted), "exactly one tool_call event per request, whichever worker took it"
        assert sum(forwarded.values()) > 0, f"some calls were taken by the worker without the session: {forwarded}"
    assert traceback_in(proxy.log) is None


async def test_events_made_while_redis_is_down_arrive_once_when_it_returns(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    port = free_port()
    with contextlib.ExitStack() as stack:
        with redis_server(port, keep_in=data) as url:
            ((proxy, _),) = stack.enter_context(_replicas(url, tmp_path, ("a",)))
            caller = Caller(proxy)
            async with httpx2.AsyncClient(timeout=30) as http:
                before = {f"before-{n}" for n in range(5)}
                assert [await caller.call(http, rid) for rid in sorted(before)] == [200] * 5
                assert await _until_calls(url, before) == Counter(before)
        async with httpx2.AsyncClient(timeout=30) as http:  # Redis is down
            during = {f"during-{n}" for n in range(10)}
            statuses = []
            for rid in sorted(during):
                statuses.append(await caller.call(http, rid))
                await asyncio.sleep(0.1)  # the outage lasts a second or more: the sink retries meanwhile
            assert statuses == [200] * 10, "requests are served while Redis is down"
            with redis_server(port, keep_in=data):
                after = {f"after-{n}" for n in range(5)}
                assert [await caller.call(http, rid) for rid in sorted(after)] == [200] * 5
                held = await _until_calls(url, before | during | after)
        assert held == Counter(before | during | after), "the outage's events arrive after it, none twice"
    log = proxy.log_text()
    assert traceback_in(proxy.log) is None
    assert log.count("audit sink redis:barbican:audit: Redis unreachable") == 1, log
    assert "audit sink redis:barbican:audit: Redis reachable again" in log, log


async def test_a_query_filters_and_pages_the_stream_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "PAGE", 3)
    with redis_server() as url:
        client = AsyncRedis.from_url(url)
        sink = RedisStreamSink(client, stream="q:audit", max_len=1000, max_pending=1000)
        try:
            events = [
                AuditEvent(
                    "tool_call" if n % 2 else "authentication",
                    "x",
                    True,
                    user=f"u{n % 3}",
                    mcp="demo",
                    request_id=f"r{n}",
                    timestamp=1_700_000_000 + n,
                ).as_dict()
                for n in range(20)
            ]
            await sink.write(events)
            await sink.aclose()  # writes what is queued
            assert [e["request_id"] for e in await sink.query(limit=4)] == ["r19", "r18", "r17", "r16"]
            calls = await sink.query(type="tool_call", user="u1", limit=100)
            assert [e["request_id"] for e in calls] == ["r19", "r13", "r7", "r1"]
            since, until = events[5]["timestamp"], events[9]["timestamp"]
            window = await sink.query(since=since, until=until, limit=100)
            assert [e["request_id"] for e in window] == ["r8", "r7", "r6", "r5"]
            assert await sink.query(mcp="other") == []
        finally:
            await client.aclose()
