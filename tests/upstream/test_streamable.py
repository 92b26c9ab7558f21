"""StreamableHttpChannel against real MCP servers on loopback (server-everything and an SDK
server), plus small aiohttp servers for the failure paths real servers do not produce."""

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
from mcp_barbican.exceptions import UpstreamClosed, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.upstream.streamable import StreamableHttpChannel
from tests.upstream.upstream_support import Recorder, initialize, notification, request, tool_text

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@contextlib.asynccontextmanager
async def channel(
    url: str, http: aiohttp.ClientSession, rec: Recorder, headers: Mapping[str, str] | None = None
) -> AsyncIterator[StreamableHttpChannel]:
    ch = StreamableHttpChannel(
        rec.on_message, rec.on_close, url=url, headers=headers or {}, http=http, start_timeout=5.0
    )
    ch.reconnect_delay = 0.05
    await ch.start()
    try:
        yield ch
    finally:
        await ch.aclose()


async def handshake(ch: StreamableHttpChannel, rec: Recorder, capabilities: dict[str, Any] | None = None) -> Message:
    await ch.send(initialize(0, capabilities))
    response, related = await rec.response(0)
    assert related == 0
    ch.protocol_version = response["result"]["protocolVersion"]
    await ch.send(notification("notifications/initialized"))
    return response


def call(request_id: int, name: str, arguments: dict[str, Any], token: str | None = None) -> Message:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return request(request_id, "tools/call", params)


def is_progress(token: str) -> Callable[[Message, Any], bool]:
    return lambda m, _: m.get("method") == "notifications/progress" and m["params"]["progressToken"] == token


# -- server-everything (TypeScript SDK) ---------------------------------------------------------


@pytest.mark.npm
async def test_everything_session(everything_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(everything_streamable, http, rec) as ch:
        init = await handshake(ch, rec)
        assert init["result"]["serverInfo"]["name"]
        assert ch.session_id
        await ch.send(request(1, "tools/list"))
        tools, related = await rec.response(1)
        assert related == 1
        names = {tool["name"] for tool in tools["result"]["tools"]}
        assert {"echo", "trigger-long-running-operation"} <= names
        await ch.send(call(2, "echo", {"message": "hello barbican"}))
        echoed, related = await rec.response(2)
        assert related == 2
        assert tool_text(echoed) == "Echo: hello barbican"
    assert rec.closes == []
    assert ch.closed


@pytest.mark.npm
async def test_progress_is_related_and_requests_run_concurrently(
    everything_streamable: str, http: aiohttp.ClientSession
) -> None:
    rec = Recorder()
    async with channel(everything_streamable, http, rec) as ch:
        await handshake(ch, rec)
        args = {"duration": 0.6, "steps": 3}
        await ch.send(call(10, "trigger-long-running-operation", args, token="a"))
        await ch.send(call(11, "trigger-long-running-operation", args, token="b"))
        # send() returned on response headers: neither 0.6 s operation has answered yet
        assert not any(m.get("id") in (10, 11) for m, _ in rec.messages)
        first, related_a = await rec.response(10)
        second, related_b = await rec.response(11)
        assert (related_a, related_b) == (10, 11)
        assert "completed" in tool_text(first) and "completed" in tool_text(second)
        for token, request_id in (("a", 10), ("b", 11)):
            progress = [(m, r) for m, r in rec.messages if is_progress(token)(m, r)]
            assert [m["params"]["progress"] for m, _ in progress] == [1, 2, 3]
            assert {r for _, r in progress} == {request_id}
            done_at = next(i for i, (m, _) in enumerate(rec.messages) if m.get("id") == request_id)
            assert all(rec.messages.index(item) < done_at for item in progress)


@pytest.mark.npm
async def test_sampling_request_round_trip(everything_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(everything_streamable, http, rec) as ch:
        await handshake(ch, rec, {"sampling": {}})
        await ch.send(call(20, "trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}))
        sampling, related = await rec.wait_for(lambda m, _: m.get("method") == "sampling/createMessage")
        assert related == 20
        assert "id" in sampling
        answer = {
            "role": "assistant",
            "content": {"type": "text", "text": "barbican says hi"},
            "model": "test-model",
            "stopReason": "endTurn",
        }
        await ch.send({"jsonrpc": "2.0", "id": sampling["id"], "result": answer})
        result, related = await rec.response(20)
        assert related == 20
        assert "barbican says hi" in tool_text(result)
        assert not any("error" in m for m, _ in rec.messages)


@pytest.mark.npm
async def test_http_error_becomes_error_response(everything_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(everything_streamable, http, rec) as ch:
        await handshake(ch, rec)
        version = ch.protocol_version
        ch.protocol_version = "1999-01-01"  # the upstream answers 400 Bad Request
        await ch.send(request(30, "tools/list"))
        error, related = await rec.response(30)
        assert related == 30
        assert error["error"]["code"] == jsonrpc.UPSTREAM_ERROR
        assert "HTTP 400" in error["error"]["message"]
        assert error["error"]["data"] == {"httpStatus": 400}
        ch.protocol_version = version
        await ch.send(call(31, "echo", {"message": "still here"}))
        echoed, _ = await rec.response(31)
        assert tool_text(echoed) == "Echo: still here"
    assert rec.closes == []


async def test_unreachable_upstream(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rec = Recorder()
    async with channel(f"http://127.0.0.1:{port}/mcp", http, rec) as ch:
        with pytest.raises(UpstreamUnavailable, match="cannot reach"):
            await ch.send(initialize())
    assert rec.messages == [] and rec.closes == []


async def test_start_rejects_non_http_url(http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    ch = StreamableHttpChannel(rec.on_message, rec.on_close, url="ftp://x/mcp", headers={}, http=http, start_timeout=1)
    with pytest.raises(UpstreamUnavailable):
        await ch.start()
    assert ch.closed


# -- the Python SDK server ----------------------------------------------------------------------


async def test_json_response_mode(py_streamable_json: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(py_streamable_json, http, rec) as ch:
        await handshake(ch, rec)
        await ch.send(call(1, "echo", {"message": "json"}))
        echoed, related = await rec.response(1)
        assert related == 1
        assert tool_text(echoed) == "Echo: json"


async def test_session_expiry_on_post_closes_the_channel(py_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(py_streamable, http, rec) as ch:
        # no notifications/initialized: no GET stream, so the POST is what meets the 404
        await ch.send(initialize(0))
        await rec.response(0)
        assert ch.session_id is not None
        # the upstream ends the session behind the channel's back
        async with http.delete(py_streamable, headers={"Mcp-Session-Id": ch.session_id}) as resp:
            assert resp.status == 200
        await ch.send(request(3, "tools/list"))
        error, related = await rec.response(3)
        assert related == 3
        assert error["error"]["code"] == jsonrpc.UPSTREAM_ERROR
        assert "expired" in error["error"]["message"]
        closed_with = await rec.closed()
        assert isinstance(closed_with, UpstreamClosed)
        assert str(closed_with) == "session expired"
        assert ch.closed
        with pytest.raises(UpstreamClosed):
            await ch.send(request(4, "tools/list"))
    assert len(rec.closes) == 1


async def test_session_expiry_seen_by_the_get_stream(py_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(py_streamable, http, rec) as ch:
        await handshake(ch, rec)
        assert ch.session_id is not None
        # make sure the GET stream is up: a tools/list_changed went through it
        await ch.send(call(1, "announce", {}))
        await rec.wait_for(lambda m, _: m.get("method") == "notifications/tools/list_changed")
        await ch.send(call(2, "ack", {}))
        await rec.response(1)
        # ending the session ends the GET stream; reconnecting meets the 404
        async with http.delete(py_streamable, headers={"Mcp-Session-Id": ch.session_id}) as resp:
            assert resp.status == 200
        closed_with = await rec.closed()
        assert isinstance(closed_with, UpstreamClosed) and str(closed_with) == "session expired"
        assert ch.closed
    assert len(rec.closes) == 1


async def test_closed_response_stream_is_resumed(py_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(py_streamable, http, rec) as ch:
        await handshake(ch, rec)
        await ch.send(call(11, "resumable", {}, token="r"))
        result, related = await rec.response(11)
        assert related == 11
        assert tool_text(result) == "resumed"  # not a synthesized error: the GET resumption worked
        progress = [(m, r) for m, r in rec.messages if is_progress("r")(m, r)]
        assert [m["params"]["progress"] for m, _ in progress] == [1, 2, 3]
        assert {r for _, r in progress} == {11}


async def test_standalone_get_stream_and_reconnect(py_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()

    def list_changed(m: Message, related: Any) -> bool:
        return m.get("method") == "notifications/tools/list_changed"

    async def announce_and_wait(first_id: int, seen: int) -> None:
        await ch.send(call(first_id, "announce", {}))
        await rec.wait_for(list_changed, since=seen)
        await ch.send(call(first_id + 1, "ack", {}))
        await rec.response(first_id)
        await rec.response(first_id + 1)

    async with channel(py_streamable, http, rec) as ch:
        await handshake(ch, rec)
        await announce_and_wait(20, 0)
        on_get = [r for m, r in rec.messages if list_changed(m, r)]
        assert on_get and set(on_get) == {None}  # the GET stream relates to no request
        await ch.send(call(22, "close_get", {}))
        await rec.response(22)
        await announce_and_wait(23, len(rec.messages))  # arrives only if the channel reconnected
    assert rec.closes == []


async def test_aclose_deletes_the_session(py_streamable: str, http: aiohttp.ClientSession) -> None:
    rec = Recorder()
    async with channel(py_streamable, http, rec) as ch:
        await handshake(ch, rec)
        session_id = ch.session_id
        assert session_id is not None
    await ch.aclose()  # idempotent
    headers = {
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
        "Accept": "application/json, text/event-stream",
    }
    async with http.post(py_streamable, json=request(9, "tools/list"), headers=headers) as resp:
        assert resp.status == 404
    assert rec.closes == []
    with pytest.raises(UpstreamClosed):
        await ch.send(request(10, "tools/list"))


# -- scripted servers for the failure paths -----------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def scripted(post: Handler, get: Handler | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/mcp", post)
    if get is not None:
        app.router.add_get("/mcp", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        await runner.cleanup()


async def sse_reply(
    request: web.Request, *chunks: bytes, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def progress_event(request_id: Any) -> bytes:
    note = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": request_id, "progress": 1},
    }
    return b"data: " + jsonrpc.dumps(note) + b"\n\n"


async def test_unanswered_stream_that_cannot_resume(http: aiohttp.ClientSession) -> None:
    gets: list[web.Request] = []

    async def post(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        if "id" not in body:
            return web.Response(status=202)
        return await sse_reply(req, b"id: ev-1\nretry: 10\n" + progress_event(body["id"]))

    async def get(req: web.Request) -> web.StreamResponse:
        gets.append(req)
        return web.Response(status=405)

    rec = Recorder()
    async with scripted(post, get) as url, channel(url, http, rec) as ch:
        await ch.send(request(5, "tools/call"))
        error, related = await rec.response(5)
        assert related == 5
        assert error["error"]["code"] == jsonrpc.UPSTREAM_ERROR
        assert "resum" in error["error"]["message"]
        note, related = await rec.wait_for(lambda m, _: m.get("method") == "notifications/progress")
        assert related == 5
        assert rec.messages.index((note, related)) < rec.messages.index((error, 5))
        assert [g.headers.get("Last-Event-ID") for g in gets] == ["ev-1"]  # 405: no further attempt


async def test_unanswered_stream_without_ids_fails_at_once(http: aiohttp.ClientSession) -> None:
    gets: list[web.Request] = []

    async def post(req: web.Request) -> web.StreamResponse:
        return await sse_reply(req, progress_event(1))

    async def get(req: web.Request) -> web.StreamResponse:
        gets.append(req)
        return web.Response(status=405)

    rec = Recorder()
    async with scripted(post, get) as url, channel(url, http, rec) as ch:
        await ch.send(request(1, "tools/call"))
        error, _ = await rec.response(1)
        assert "without answering" in error["error"]["message"]
    assert gets == []


async def test_headers_invalid_json_and_get_405(http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    posts: list[web.Request] = []
    gets: list[web.Request] = []
    get_seen = asyncio.Event()

    async def post(req: web.Request) -> web.StreamResponse:
        posts.append(req)
        body = await req.json()
        if "id" not in body:
            return web.Response(status=202)
        if body["method"] == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}
            return web.json_response(
                {"jsonrpc": "2.0", "id": body["id"], "result": result}, headers={"Mcp-Session-Id": "s-1"}
            )
        answer = jsonrpc.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {}})
        return await sse_reply(req, b": keep-alive\n\n", b"data: {not json\n\n", b"data: " + answer + b"\n\n")

    async def get(req: web.Request) -> web.StreamResponse:
        gets.append(req)
        get_seen.set()
        return web.Response(status=405)

    rec = Recorder()
    headers = {"X-Api-Key": "s3cr3t-value", "Accept": "text/plain"}
    with caplog.at_level(logging.DEBUG, logger="mcp_barbican"):
        async with scripted(post, get) as url, channel(url, http, rec, headers=headers) as ch:
            await handshake(ch, rec)
            await ch.send(request(1, "ping"))
            answer, related = await rec.response(1)
            assert answer["result"] == {} and related == 1
            await asyncio.wait_for(get_seen.wait(), 5)
            await ch.send(request(2, "ping"))  # time for a (wrong) GET retry to show up
            await rec.response(2)
    assert "dropped an upstream message that is not JSON" in caplog.text
    assert "s3cr3t-value" not in caplog.text
    assert len(gets) == 1
    for req in [*posts, *gets]:
        assert req.headers["X-Api-Key"] == "s3cr3t-value"
    assert "Mcp-Session-Id" not in posts[0].headers
    assert posts[0].headers["Accept"] == "application/json, text/event-stream"
    assert posts[0].headers["Content-Type"] == "application/json"
    for req in [*posts[1:], *gets]:
        assert req.headers["Mcp-Session-Id"] == "s-1"
        assert req.headers["MCP-Protocol-Version"] == "2025-11-25"
    assert gets[0].headers["Accept"] == "text/event-stream"


async def test_404_without_session_is_a_plain_error(http: aiohttp.ClientSession) -> None:
    async def post(req: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="no such endpoint")

    rec = Recorder()
    async with scripted(post) as url, channel(url, http, rec) as ch:
        await ch.send(request(1, "initialize"))
        error, related = await rec.response(1)
        assert related == 1
        assert error["error"]["message"] == "upstream answered HTTP 404: no such endpoint"
        await ch.send(notification("notifications/initialized"))  # logged, not raised
        assert not ch.closed
    assert rec.closes == []
