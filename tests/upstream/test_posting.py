"""The Streamable HTTP channel's own HTTP/1.1 client (upstream/posting.py) against hostile upstreams.

Raw asyncio servers answer the first POST of a connection properly (so the next POST goes out
on the kept-alive connection, the hot path) and then whatever the test scripts. Every broken
answer must end as a clear error for the request, without a traceback in the log, and leave no
connection behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from mcp_barbican.exceptions import UpstreamClosed, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.upstream.http import make_http_session
from mcp_barbican.upstream.posting import MAX_HEAD_BYTES
from mcp_barbican.upstream.streamable import StreamableHttpChannel
from tests.upstream.upstream_support import Recorder, leftover_tasks, request

pytestmark = pytest.mark.anyio

LIMIT = 4096  # the channel's max_event_bytes in these tests


@dataclass
class Server:
    url: str
    connections: int = 0
    open: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever no connection is open


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body: dict[str, Any] = json.loads(await reader.readexactly(length))
    return body


def json_answer(body: dict[str, Any], extra: bytes = b"") -> bytes:
    data = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"ok": body["id"]}}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    return head + extra + b"\r\n" + data


@contextlib.asynccontextmanager
async def upstream(script: Script) -> AsyncIterator[Server]:
    """Answers each connection's first request with JSON, hands the next one to `script`."""
    server = Server("")
    handlers: set[asyncio.Task[Any]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        server.connections += 1
        server.open += 1
        server.idle.clear()
        try:
            writer.write(json_answer(await read_request(reader)))
            await script(reader, writer, await read_request(reader))
            await reader.read()  # until the client hangs up
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            server.open -= 1
            if not server.open:
                server.idle.set()
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/mcp"
    try:
        yield server
    finally:
        listener.close()
        for writer in writers:
            writer.transport.abort()  # the handlers' reads end with a ConnectionError
        await asyncio.gather(*handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def channel(
    url: str, rec: Recorder, *, connect_timeout: float = 5.0, identity: dict[str, str] | None = None
) -> AsyncIterator[StreamableHttpChannel]:
    http = make_http_session(None, connect_timeout=connect_timeout)
    ch = StreamableHttpChannel(
        rec.on_message,
        rec.on_close,
        url=url,
        headers={},
        http=http,
        start_timeout=5.0,
        max_event_bytes=LIMIT,
        identity=(lambda: identity) if identity else None,
    )
    await ch.start()
    try:
        yield ch
    finally:
        await ch.aclose()
        await http.close()


async def second_answer(server: Server, rec: Recorder) -> Message:
    """Request 1 (answered properly), then request 2 on the same kept-alive connection."""
    async with channel(server.url, rec) as ch:
        await ch.send(request(1, "tools/list"))
        first, _ = await rec.response(1)
        assert first["result"] == {"ok": 1}
        await ch.send(request(2, "tools/list"))
        answer, related = await rec.response(2)
        assert related == 2
    return answer


async def gone(server: Server) -> None:
    """The upstream saw every connection closed."""
    await asyncio.wait_for(server.idle.wait(), 5)


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="mcp_barbican")
    return caplog


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text


def error_text(answer: Message) -> str:
    assert "result" not in answer
    return str(answer["error"]["message"])


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n", "head exceeds"),
        (b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "unreadable HTTP answer"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "unreadable HTTP answer: Invalid character in chunk size",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"jsonrpc"',
            "closed the connection",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1),
            f"response body of {LIMIT + 1} bytes exceeds the {LIMIT} byte limit",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % (LIMIT + 1)
            + b"x" * (LIMIT + 1),
            f"response body exceeds the {LIMIT} byte limit",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\ndata: " % (LIMIT + 7)
            + b"x" * (LIMIT + 1),
            f"server-sent event exceeds the {LIMIT} byte limit",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "interim"),
    ],
    ids=[
        "huge-head",
        "bad-status",
        "bad-chunk-size",
        "closed-mid-body",
        "huge-length",
        "huge-chunked",
        "huge-event",
        "1xx",
    ],
)
async def test_broken_answer_is_an_error_for_the_request(
    attack: bytes, expected: str, quiet_log: pytest.LogCaptureFixture
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.write(attack)
        await writer.drain()
        if b"Content-Length: 100\r\n" in attack:
            writer.close()  # mid-answer

    rec = Recorder()
    async with upstream(script) as server:
        answer = await second_answer(server, rec)
        assert expected in error_text(answer)
        await gone(server)
    assert_no_traceback(quiet_log)


async def test_a_header_that_never_ends_is_cut_off(quiet_log: pytest.LogCaptureFixture) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: ")
        for _ in range(64):  # 4 MiB of one header's value, never ended
            writer.write(b"a" * 65536)
            await writer.drain()

    rec = Recorder()
    async with upstream(script) as server:
        answer = await second_answer(server, rec)
        assert f"more than {MAX_HEAD_BYTES} bytes of head or framing" in error_text(answer)
        await gone(server)
    assert_no_traceback(quiet_log)


async def test_broken_answer_on_a_new_connection_is_raised() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        raise AssertionError("never reached")

    async def bad_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 2x0 OK\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(bad_first, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/mcp"
    rec = Recorder()
    try:
        async with channel(url, rec) as ch:
            with pytest.raises(UpstreamClosed, match="POST to .* failed: unreadable HTTP answer"):
                await ch.send(request(1, "tools/list"))
    finally:
        listener.close()
    assert rec.messages == []


async def test_a_body_that_never_ends_holds_a_bounded_pool_and_is_dropped_on_close(
    quiet_log: pytest.LogCaptureFixture,
) -> None:
    stalled = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\n: ping\n")  # a chunk, never its end
        await writer.drain()
        stalled.set()

    rec = Recorder()
    async with upstream(script) as server:
        async with channel(server.url, rec, connect_timeout=0.5) as ch:
            ch.post_connections = 1
            await ch.send(request(1, "tools/list"))
            await rec.response(1)
            await ch.send(request(2, "tools/call"))  # stalls on the only connection allowed
            await asyncio.wait_for(stalled.wait(), 5)
            with pytest.raises(UpstreamUnavailable, match="all 1 connections to .* are busy"):
                await ch.send(request(3, "tools/list"))
            assert server.connections == 1
        await gone(server)  # aclose() dropped the stalled answer's connection
    assert [m for m, _ in rec.messages if m.get("id") == 2] == []  # the core times it out, not the channel
    assert_no_traceback(quiet_log)


async def test_keepalive_closed_by_the_upstream_is_retried_once_on_a_new_connection(
    quiet_log: pytest.LogCaptureFixture,
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.close()  # read the request on the old connection, close without a byte

    rec = Recorder()
    async with upstream(script) as server, channel(server.url, rec) as ch:
        await ch.send(request(1, "tools/list"))
        await rec.response(1)
        await ch.send(request(2, "tools/list"))
        answer, _ = await rec.response(2)
        assert answer["result"] == {"ok": 2}  # answered on the second connection, as its first request
        assert server.connections == 2
    assert_no_traceback(quiet_log)


async def test_bytes_after_the_answer_retire_the_connection(quiet_log: pytest.LogCaptureFixture) -> None:
    answers: list[bytes] = []

    async def first_and_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await read_request(reader)
            answers.append(json.dumps(body).encode())
            writer.write(json_answer(body) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
            await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(first_and_garbage, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/mcp"
    rec = Recorder()
    try:
        async with channel(url, rec) as ch:
            for request_id in (1, 2, 3):
                await ch.send(request(request_id, "tools/list"))
                answer, _ = await rec.response(request_id)
                assert answer["result"] == {"ok": request_id}
    finally:
        listener.close()
    assert len(answers) == 3  # each on a connection of its own: none was reused after the extra bytes
    assert_no_traceback(quiet_log)


async def test_body_delimited_by_close() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        data = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"until": "close"}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + data)
        await writer.drain()
        writer.close()

    rec = Recorder()
    async with upstream(script) as server:
        answer = await second_answer(server, rec)
        assert answer["result"] == {"until": "close"}


async def test_header_with_a_line_break_is_never_sent(quiet_log: pytest.LogCaptureFixture) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        raise AssertionError("never reached")

    rec = Recorder()
    async with upstream(script) as server:
        async with channel(server.url, rec, identity={"X-User": "alice\r\nX-Admin: yes"}) as ch:
            with pytest.raises(UpstreamClosed, match="'X-User' cannot be sent"):
                await ch.send(request(1, "tools/list"))
        assert server.connections == 0
    assert_no_traceback(quiet_log)


async def test_pool_reuses_one_connection_for_sequential_requests(http: aiohttp.ClientSession) -> None:
    seen: list[int] = []

    async def many(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        try:
            while True:
                writer.write(json_answer(await read_request(reader)))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(many, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/mcp"
    rec = Recorder()
    try:
        ch = StreamableHttpChannel(rec.on_message, rec.on_close, url=url, headers={}, http=http, start_timeout=5.0)
        await ch.start()
        try:
            for request_id in range(1, 6):
                await ch.send(request(request_id, "ping"))
                await rec.response(request_id)
        finally:
            await ch.aclose()
    finally:
        listener.close()
    assert seen == [1]


async def test_aclose_with_a_request_awaiting_its_head_leaves_nothing_behind(
    quiet_log: pytest.LogCaptureFixture,
) -> None:
    asked = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        asked.set()  # and never answer

    rec = Recorder()
    async with upstream(script) as server:
        async with channel(server.url, rec) as ch:
            await ch.send(request(1, "tools/list"))
            await rec.response(1)
            await ch.send(request(2, "tools/call"))
            await asyncio.wait_for(asked.wait(), 5)
        await gone(server)
        assert server.connections == 1  # not sent again after the close
    assert leftover_tasks() == []
    assert [m for m, _ in rec.messages if m.get("id") == 2] == []
    assert_no_traceback(quiet_log)


async def test_a_request_waiting_for_a_connection_fails_at_once_when_the_channel_closes() -> None:
    asked = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        asked.set()  # and never answer

    rec = Recorder()
    async with upstream(script) as server, channel(server.url, rec, connect_timeout=60) as ch:
        ch.post_connections = 1
        await ch.send(request(1, "tools/list"))
        await rec.response(1)
        await ch.send(request(2, "tools/call"))
        await asyncio.wait_for(asked.wait(), 5)
        waiting = asyncio.create_task(ch.send(request(3, "tools/list")))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await ch.aclose()
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(waiting, 5)


@pytest.mark.parametrize(
    ("url", "headers", "expected"),
    [
        (
            "http://127.0.0.1:8080/mcp?x=1",
            {"Accept": "application/json"},
            [
                b"POST /mcp?x=1 HTTP/1.1",
                b"Host: 127.0.0.1:8080",
                b"Accept: application/json",
                b"User-Agent: mcp-barbican/",
            ],
        ),
        (
            "https://example.org/mcp",
            {"User-Agent": "mine"},
            [b"POST /mcp HTTP/1.1", b"Host: example.org", b"User-Agent: mine"],
        ),
        ("http://[::1]:9/m", {}, [b"POST /m HTTP/1.1", b"Host: [::1]:9", b"User-Agent: mcp-barbican/"]),
        (
            "http://u:p%40ss@h/m",
            {},
            [b"POST /m HTTP/1.1", b"Host: h", b"User-Agent: mcp-barbican/", b"Authorization: Basic dTpwQHNz"],
        ),
        (
            "http://u:p@h/m",
            {"Authorization": "Bearer t"},
            [b"POST /m HTTP/1.1", b"Host: h", b"Authorization: Bearer t", b"User-Agent: mcp-barbican/"],
        ),
    ],
)
async def test_request_head(url: str, headers: dict[str, str], expected: list[bytes]) -> None:
    from yarl import URL

    from mcp_barbican.upstream.posting import request_head

    head = request_head(URL(url), headers)
    assert head.endswith(b"\r\n") and not head.endswith(b"\r\n\r\n")
    lines = head.split(b"\r\n")[:-1]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)
