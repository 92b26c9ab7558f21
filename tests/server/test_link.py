"""The relay core in-process: a Link over a mock upstream, no process and no socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcp_barbican import jsonrpc
from mcp_barbican.jsonrpc import Message
from mcp_barbican.server import link as link_module
from mcp_barbican.server.link import Link
from mcp_barbican.server.session import Session
from mcp_barbican.server.streams import EventStream
from mcp_barbican.upstream.mock import MockUpstream

pytestmark = pytest.mark.anyio

INIT_PARAMS: dict[str, Any] = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}}
INIT_RESULT: dict[str, Any] = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "mock"}}


def answer(message: Message, result: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def server(message: Message) -> list[Message]:
    """A small MCP server: answers initialize, echoes tools/call arguments, ignores the rest."""
    method = message.get("method")
    if method == "initialize":
        return [answer(message, INIT_RESULT)]
    if method == "tools/call":
        return [answer(message, {"echo": message["params"]["arguments"]})]
    return []


async def open_link(upstream: MockUpstream, *, shared: bool = True, request_timeout: float = 5.0) -> Link:
    link = Link("mock", upstream, shared=shared, start_timeout=1.0, request_timeout=request_timeout)
    await link.connect()
    await link.handshake(dict(INIT_PARAMS))
    return link


def session_on(link: Link, **capabilities: Any) -> Session:
    session = Session("mock", "alice")
    session.capabilities = capabilities
    session.initialized = True
    link.attach(session)
    return session


def tool_call(request_id: Any, arguments: dict[str, Any], **meta: Any) -> Message:
    params: dict[str, Any] = {"name": "echo", "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def messages(stream: EventStream) -> list[Message]:
    events, _ = stream.read_from(1)
    lines = (line for event in events for line in event.split(b"\n"))
    return [jsonrpc.loads(line.removeprefix(b"data: ")) for line in lines if line.startswith(b"data: ")]


async def answered(*streams: EventStream) -> None:
    """Wait (at most a second) until each stream got its final message."""
    async with asyncio.timeout(1.0):
        for stream in streams:
            while not stream.done:
                await stream.wait(stream.next_seq, None)


async def test_two_sessions_with_the_same_request_id_get_their_own_answers() -> None:
    upstream = MockUpstream(server)
    link = await open_link(upstream)
    first, second = session_on(link), session_on(link)
    first_stream, second_stream = first.open_stream(), second.open_stream()

    await link.forward_request(first, tool_call(1, {"who": "first"}), first_stream)
    await link.forward_request(second, tool_call(1, {"who": "second"}), second_stream)
    await answered(first_stream, second_stream)

    upstream_ids = [m["id"] for m in upstream.channel.sent if m.get("method") == "tools/call"]
    assert len(set(upstream_ids)) == 2, upstream_ids
    assert messages(first_stream) == [{"jsonrpc": "2.0", "id": 1, "result": {"echo": {"who": "first"}}}]
    assert messages(second_stream) == [{"jsonrpc": "2.0", "id": 1, "result": {"echo": {"who": "second"}}}]
    assert not first.inflight and not second.inflight


async def test_an_unanswered_request_times_out_and_is_cancelled_upstream() -> None:
    cancelled = asyncio.Event()

    def silent_server(message: Message) -> list[Message]:
        if message.get("method") == "notifications/cancelled":
            cancelled.set()
        return [answer(message, INIT_RESULT)] if message.get("method") == "initialize" else []

    upstream = MockUpstream(silent_server)
    link = await open_link(upstream, request_timeout=0.05)
    session = session_on(link)
    stream = session.open_stream()

    await link.forward_request(session, tool_call("req-7", {}), stream)
    await answered(stream)

    [reply] = messages(stream)
    assert reply["id"] == "req-7"
    assert reply["error"]["code"] == jsonrpc.UPSTREAM_ERROR
    assert "did not answer within 0.05s" in reply["error"]["message"]
    assert not session.inflight
    upstream_id = next(m["id"] for m in upstream.channel.sent if m.get("method") == "tools/call")
    await asyncio.wait_for(cancelled.wait(), 1.0)
    assert upstream.channel.sent[-1]["params"]["requestId"] == upstream_id


async def test_a_server_request_goes_to_the_session_whose_request_is_in_flight() -> None:
    def sampling_server(message: Message) -> list[Message]:
        if message.get("method") == "tools/call":  # asks the client's model and answers later
            ask = {"messages": [], "maxTokens": 1}
            return [{"jsonrpc": "2.0", "id": "s-1", "method": "sampling/createMessage", "params": ask}]
        return server(message)

    upstream = MockUpstream(sampling_server)  # stdio-like: nothing says which request the ask belongs to
    link = await open_link(upstream)
    idle = session_on(link, sampling={})
    busy = session_on(link, sampling={})
    busy_stream = busy.open_stream()

    await link.forward_request(busy, tool_call(3, {}), busy_stream)
    await busy_stream.wait(1, 1.0)

    [ask] = messages(busy_stream)
    assert ask["method"] == "sampling/createMessage"
    assert ask["id"] == 1  # the session's own numbering, not the upstream's "s-1"
    assert messages(idle.get_stream) == [] and messages(busy.get_stream) == []
    assert busy.server_requests == {1: "s-1"}

    reply = {"jsonrpc": "2.0", "id": 1, "result": {"role": "assistant", "content": {"type": "text", "text": "hi"}}}
    assert await link.forward_response(busy, reply)
    assert upstream.channel.sent[-1] == {**reply, "id": "s-1"}
    assert busy.server_requests == {}


async def test_progress_tokens_are_link_unique_upstream_and_restored_downstream() -> None:
    def progress_server(message: Message) -> list[Message]:
        if message.get("method") == "tools/call":
            token = message["params"]["_meta"]["progressToken"]
            progress = {"progressToken": token, "progress": 1, "total": 2}
            return [{"jsonrpc": "2.0", "method": "notifications/progress", "params": progress}, answer(message, {})]
        return server(message)

    upstream = MockUpstream(progress_server)
    link = await open_link(upstream)
    first, second = session_on(link), session_on(link)
    first_stream, second_stream = first.open_stream(), second.open_stream()

    await link.forward_request(first, tool_call(1, {}, progressToken="tok"), first_stream)
    await link.forward_request(second, tool_call(1, {}, progressToken="tok"), second_stream)
    await answered(first_stream, second_stream)

    sent = [m for m in upstream.channel.sent if m.get("method") == "tools/call"]
    assert [m["params"]["_meta"]["progressToken"] for m in sent] == [m["id"] for m in sent]
    for stream in (first_stream, second_stream):
        progress, done = messages(stream)
        assert progress["params"] == {"progressToken": "tok", "progress": 1, "total": 2}
        assert done == {"jsonrpc": "2.0", "id": 1, "result": {}}


async def test_a_shared_link_whose_upstream_dies_fails_its_requests_then_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_module, "RESTART_BACKOFF", (0.01, 2.0, 0.1))
    states: list[tuple[str, str | None]] = []
    upstream = MockUpstream(lambda m: [answer(m, INIT_RESULT)] if m.get("method") == "initialize" else [])
    link = Link(
        "mock",
        upstream,
        shared=True,
        start_timeout=1.0,
        request_timeout=5.0,
        on_state=lambda _link, state, reason: states.append((state, reason)),
    )
    await link.connect()
    await link.handshake(dict(INIT_PARAMS))
    session = session_on(link)
    stream = session.open_stream()

    await link.forward_request(session, tool_call(1, {}), stream)
    upstream.channel.fail(ConnectionResetError("reset by peer"))

    [reply] = messages(stream)
    assert reply["id"] == 1 and "went away: reset by peer" in reply["error"]["message"]
    assert not session.inflight and not link.ready
    await link.wait_ready()
    assert states == [("failed", "reset by peer"), ("ready", None)]
    assert len(upstream.channels) == 2 and link.channel is upstream.channel
    assert [m.get("method") for m in upstream.channel.sent] == ["initialize", "notifications/initialized"]
    assert upstream.channel.sent[0]["params"] == INIT_PARAMS
    await link.aclose()
