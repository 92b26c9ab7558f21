"""SseParser edge cases, and SseChannel against real legacy-SSE MCP servers on loopback
(server-everything and an SDK server) plus small aiohttp servers for the failure paths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamClosed, UpstreamTimeout, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.upstream.http import SseError, SseEvent, SseParser
from mcp_barbican.upstream.sse import SseChannel
from tests.upstream.upstream_support import Recorder, initialize, notification, request, tool_text

pytestmark = pytest.mark.e2e

# -- the parser ---------------------------------------------------------------------------------


def ev(data: bytes, event: str = "message", id: str | None = None, retry: int | None = None) -> SseEvent:
    return SseEvent(event, data, id, retry)


PARSER_CASES: list[tuple[str, list[bytes], list[SseEvent]]] = [
    ("lf", [b"data: hello\n\n"], [ev(b"hello")]),
    ("crlf", [b"event: endpoint\r\ndata: /x?s=1\r\n\r\n"], [ev(b"/x?s=1", "endpoint")]),
    ("cr only", [b"data: a\rdata: b\r\r"], [ev(b"a\nb")]),
    ("multi-line data", [b"data: line1\ndata: line2\ndata:\n\n"], [ev(b"line1\nline2\n")]),
    ("comments", [b": keep-alive\n\n: ping\ndata: x\n: inside\n\n"], [ev(b"x")]),
    ("split mid-line", [b"da", b"ta: he", b"llo\n", b"\n"], [ev(b"hello")]),
    ("split crlf", [b"data: a\r", b"\n", b"\r", b"\ndata: b\r\n\r\n"], [ev(b"a"), ev(b"b")]),
    ("crlf across lines", [b"data: a\r\n", b"\r\n", b"data: b\n\n"], [ev(b"a"), ev(b"b")]),
    (
        "id and retry",
        [b"id: 7\nretry: 1500\ndata: x\n\n", b"retry: soon\ndata: y\n\n"],
        [ev(b"x", id="7", retry=1500), ev(b"y")],
    ),
    ("priming event", [b"id: p1\ndata:\n\n"], [ev(b"", id="p1")]),
    ("no data, no event", [b"id: z\nevent: nothing\n\n"], []),
    ("bom", [b"\xef\xbb\xbfdata: x\n\n"], [ev(b"x")]),
    ("split bom", [b"\xef", b"\xbb", b"\xbfdata: x\n\n"], [ev(b"x")]),
    ("bom only at start", [b"data: x\n\n\xef\xbb\xbfdata: y\n\n"], [ev(b"x")]),
    ("field without colon", [b"data\n\n"], [ev(b"")]),
    ("no space after colon", [b"data:x\n\n"], [ev(b"x")]),
    ("only one space removed", [b"data:  x\n\n"], [ev(b" x")]),
    ("unknown field ignored", [b"foo: bar\ndata: x\n\n"], [ev(b"x")]),
    ("id with NUL ignored", [b"id: a\x00b\ndata: x\n\n"], [ev(b"x")]),
    ("incomplete event dropped at EOF", [b"data: x\n"], []),
    ("utf-8 kept raw", ["data: héllo ✓\n\n".encode()], [ev("héllo ✓".encode())]),
]


@pytest.mark.parametrize(("chunks", "expected"), [c[1:] for c in PARSER_CASES], ids=[c[0] for c in PARSER_CASES])
def test_parser(chunks: list[bytes], expected: list[SseEvent]) -> None:
    parser = SseParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert events == expected
    # the same stream fed one byte at a time gives the same events
    whole = b"".join(chunks)
    parser = SseParser()
    assert [event for i in range(len(whole)) for event in parser.feed(whole[i : i + 1])] == expected


def test_parser_state() -> None:
    parser = SseParser()
    parser.feed(b"id: 1\nretry: 250\ndata: a\n\n")
    parser.feed(b"id: 2\n\n")  # an id-only block updates the last event id without an event
    assert (parser.last_event_id, parser.retry, parser.dispatched) == ("2", 250, 1)
    assert parser.feed(b"data: b\n\n") == [ev(b"b")]  # the event's own id field was absent
    assert parser.last_event_id == "2"


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: 0123456789abcdef\n"],  # one data line
        [b"data: 01234567\n", b"data: 89abcdef\n"],  # data lines that add up
        [b"data: 0123", b"456789", b"abcdef"],  # a line that never ends
        [b"event: 0123456789abcdef"],  # any field
    ],
)
def test_parser_refuses_oversized_events(chunks: list[bytes]) -> None:
    parser = SseParser(max_event_bytes=16)
    with pytest.raises(SseError, match="16 byte limit"):
        for chunk in chunks:
            parser.feed(chunk)


def test_parser_size_limit_is_per_event() -> None:
    parser = SseParser(max_event_bytes=16)
    for _ in range(10):
        assert parser.feed(b"data: 0123456789\n\n") == [ev(b"0123456789")]


# -- channels against real servers --------------------------------------------------------------


@contextlib.asynccontextmanager
async def channel(
    url: str,
    http: aiohttp.ClientSession,
    rec: Recorder,
    headers: Mapping[str, str] | None = None,
    start_timeout: float = 5.0,
) -> AsyncIterator[SseChannel]:
    ch = SseChannel(
        rec.on_message, rec.on_close, url=url, headers=headers or {}, http=http, start_timeout=start_timeout
    )
    try:
        await ch.start()
        yield ch
    finally:
        await ch.aclose()


async def handshake(ch: SseChannel, rec: Recorder, capabilities: dict[str, Any] | None = None) -> Message:
    await ch.send(initialize(0, capabilities))
    response, related = await rec.response(0)
    assert related is None  # legacy SSE relates nothing
    await ch.send(notification("notifications/initialized"))
    return response


def call(request_id: int, name: str, arguments: dict[str, Any], token: str | None = None) -> Message:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return request(request_id, "tools/call", params)


@pytest.mark.npm
@pytest.mark.anyio
async def test_everything_session(everything_sse: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(everything_sse, http, rec) as ch:
        assert ch.endpoint is not None and ch.endpoint.path == "/message"
        assert ch.endpoint.query.get("sessionId")
        init = await handshake(ch, rec)
        assert init["result"]["serverInfo"]["name"]
        await ch.send(request(1, "tools/list"))
        tools, _ = await rec.response(1)
        assert "echo" in {tool["name"] for tool in tools["result"]["tools"]}
        await ch.send(call(2, "echo", {"message": "hello barbican"}))
        echoed, related = await rec.response(2)
        assert related is None
        assert tool_text(echoed) == "Echo: hello barbican"
    assert rec.closes == []  # aclose() never calls on_close


@pytest.mark.npm
@pytest.mark.anyio
async def test_everything_progress_and_sampling(everything_sse: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(everything_sse, http, rec) as ch:
        await handshake(ch, rec, {"sampling": {}})
        await ch.send(call(3, "trigger-long-running-operation", {"duration": 0.3, "steps": 3}, token="p"))
        done, _ = await rec.response(3)
        assert "completed" in tool_text(done)
        progress = [m for m, _ in rec.messages if m.get("method") == "notifications/progress"]
        assert [m["params"]["progress"] for m in progress] == [1, 2, 3]
        assert all(m["params"]["progressToken"] == "p" for m in progress)

        await ch.send(call(4, "trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}))
        sampling, related = await rec.wait_for(lambda m, _: m.get("method") == "sampling/createMessage")
        assert related is None
        answer = {
            "role": "assistant",
            "content": {"type": "text", "text": "barbican says hi"},
            "model": "test-model",
            "stopReason": "endTurn",
        }
        await ch.send({"jsonrpc": "2.0", "id": sampling["id"], "result": answer})
        result, _ = await rec.response(4)
        assert "barbican says hi" in tool_text(result)
        assert not any("error" in m for m, _ in rec.messages)


@pytest.mark.anyio
async def test_python_sdk_server(py_sse: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(py_sse, http, rec) as ch:
        assert ch.endpoint is not None and ch.endpoint.path == "/messages/"
        await handshake(ch, rec)
        await ch.send(call(1, "echo", {"message": "sdk"}))
        echoed, _ = await rec.response(1)
        assert tool_text(echoed) == "Echo: sdk"


@pytest.mark.anyio
async def test_unreachable_upstream(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rec = Recorder()
    with pytest.raises(UpstreamUnavailable, match="cannot reach"):
        async with channel(f"http://127.0.0.1:{port}/sse", http, rec):
            pass
    assert rec.closes == []


# -- scripted servers ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def scripted(get: Handler, post: Handler | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/sse", get)
    if post is not None:
        app.router.add_post("/messages", post)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/sse"
    finally:
        await runner.cleanup()


async def open_stream(req: web.Request, *chunks: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(req)
    for chunk in chunks:
        await resp.write(chunk)
    return resp


def message_event(message: Message) -> bytes:
    return b"event: message\ndata: " + jsonrpc.dumps(message) + b"\n\n"


@pytest.mark.anyio
async def test_http_error_on_get(http: aiohttp.ClientSession) -> None:
    async def get(req: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text="token required")

    async with scripted(get) as url:
        with pytest.raises(UpstreamUnavailable, match="HTTP 401 Unauthorized: token required"):
            async with channel(url, http, Recorder()):
                pass


@pytest.mark.anyio
async def test_no_endpoint_event_times_out(http: aiohttp.ClientSession) -> None:
    async def get(req: web.Request) -> web.StreamResponse:
        resp = await open_stream(req, b": waiting\n\n")
        await asyncio.sleep(30)  # never sends the endpoint; cancelled when the client leaves
        return resp

    rec = Recorder()
    async with scripted(get) as url:
        with pytest.raises(UpstreamTimeout, match="no endpoint event"):
            async with channel(url, http, rec, start_timeout=0.3):
                pass
    assert rec.closes == []


@pytest.mark.parametrize(
    "endpoint",
    [b"http://127.0.0.2:{port}/messages", b"//evil.example/messages", b"https://127.0.0.1:{port}/messages", b""],
    ids=["other host", "scheme-relative", "other scheme", "empty"],
)
@pytest.mark.anyio
async def test_endpoint_on_another_origin_is_refused(http: aiohttp.ClientSession, endpoint: bytes) -> None:
    async def get(req: web.Request) -> web.StreamResponse:
        port = str(req.url.port).encode()
        resp = await open_stream(req, b"event: endpoint\ndata: " + endpoint.replace(b"{port}", port) + b"\n\n")
        await asyncio.sleep(30)
        return resp

    async with scripted(get) as url:
        with pytest.raises(UpstreamUnavailable, match="another origin"):
            async with channel(url, http, Recorder()):
                pass


@pytest.mark.anyio
async def test_stream_end_post_errors_and_headers(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    end_stream = asyncio.Event()
    seen: list[web.Request] = []
    bodies: list[Any] = []

    async def get(req: web.Request) -> web.StreamResponse:
        seen.append(req)
        hello = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}}
        resp = await open_stream(
            req,
            b": comment\r\nevent: endpoint\r\ndata: /messages?sid=1\r\n\r\n",
            message_event(hello),
            b"event: message\ndata: {broken\n\n",
            b"data: " + jsonrpc.dumps({"jsonrpc": "2.0", "id": 99, "result": {}}) + b"\n\n",
        )
        await end_stream.wait()
        return resp

    async def post(req: web.Request) -> web.StreamResponse:
        seen.append(req)
        body = await req.json()
        bodies.append(body)
        if body.get("method") == "bad":
            return web.Response(status=400, text="bad   thing\n happened")
        if body.get("method") == "notifications/bad":
            return web.Response(status=500)
        if body.get("method") == "hangup":
            assert req.transport is not None
            req.transport.close()
        return web.Response(status=202, text="Accepted")

    rec = Recorder()
    headers = {"Authorization": "Bearer s3cr3t-token"}
    with caplog.at_level(logging.DEBUG, logger="mcp_barbican"):
        async with scripted(get, post) as url, channel(url, http, rec, headers=headers) as ch:
            assert ch.endpoint is not None and ch.endpoint.path_qs == "/messages?sid=1"
            note, related = await rec.wait_for(lambda m, _: m.get("method") == "notifications/message")
            assert related is None
            await rec.response(99)  # the broken event was dropped, the stream went on
            assert [m.get("id") for m, _ in rec.messages] == [None, 99]

            await ch.send(request(1, "bad"))
            error, related = await rec.response(1)
            assert related is None
            assert error["error"]["code"] == jsonrpc.UPSTREAM_ERROR
            assert error["error"]["message"] == "upstream answered HTTP 400: bad thing happened"
            await ch.send(notification("notifications/bad"))  # logged only
            await ch.send(notification("notifications/ok"))
            with pytest.raises(UpstreamClosed):
                await ch.send(request(2, "hangup"))
            assert len(rec.messages) == 3

            end_stream.set()
            closed_with = await rec.closed()
            assert isinstance(closed_with, UpstreamClosed)
            assert ch.closed
            with pytest.raises(UpstreamClosed):
                await ch.send(notification("notifications/late"))
    assert len(rec.closes) == 1
    assert [b.get("method") for b in bodies] == ["bad", "notifications/bad", "notifications/ok", "hangup"]
    assert "dropped an SSE message event that is not JSON" in caplog.text
    assert "rejected a notification: upstream answered HTTP 500" in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("mcp_barbican"))
    assert "s3cr3t" not in ours and "sid=1" not in ours  # the test server's own access log may show them
    for req in seen:
        assert req.headers["Authorization"] == "Bearer s3cr3t-token"
    assert seen[0].headers["Accept"] == "text/event-stream"
    assert all(req.headers["Content-Type"] == "application/json" for req in seen[1:])
