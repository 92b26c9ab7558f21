"""Sessions per principal through a running proxy (`server.limits.max_sessions_per_principal`, `init_timeout`).

The cap counts Streamable HTTP sessions and legacy SSE streams together, across every MCP of the
listener; callers of an MCP without authentication count per client address. Each test uses its
own principal (or address), since the count is the listener's.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator

import httpx2
import orjson
import pytest

from tests.proxy import RunningProxy, demo_mcp, free_port, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

CAP = 2
INIT_TIMEOUT = 3.0
TOKENS = {name: f"{name}-token-0123456789" for name in ("alice", "bob", "carol", "dave", "erin", "frank")}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    server = {
        "limits": {"max_sessions_per_principal": CAP, "init_timeout": f"{INIT_TIMEOUT:g}s"},
        "auth": {"type": "token", "tokens": [{"id": name, "token": token} for name, token in TOKENS.items()]},
    }
    mcps = [demo_mcp("x", max_sessions=CAP + 1), demo_mcp("y"), {**demo_mcp("open"), "auth": {"type": "none"}}]
    mcps.append({"id": "down", "url": f"http://127.0.0.1:{free_port()}/mcp", "required": False})
    with run_proxy(tmp_path_factory.mktemp("quota"), mcps, server=server) as running:
        yield running


def headers(name: str) -> dict[str, str]:
    return {**MCP_HEADERS, "Authorization": f"Bearer {TOKENS[name]}"}


def initialize(proxy: RunningProxy, name: str, mcp_id: str = "x") -> httpx2.Response:
    return httpx2.post(proxy.url(mcp_id), headers=headers(name), json=INIT, timeout=30)


def delete(proxy: RunningProxy, name: str, session: str, mcp_id: str = "x") -> None:
    response = httpx2.delete(proxy.url(mcp_id), headers={**headers(name), "Mcp-Session-Id": session}, timeout=30)
    assert response.status_code == 204


def assert_too_many(status: int, body: bytes) -> None:
    assert status == 429, body
    refusal = orjson.loads(body)
    assert refusal["error"] == "too_many_sessions"
    assert "max_sessions_per_principal" in refusal["message"]


class SseStream:
    """A legacy SSE stream held open on a raw socket (from `source`, a loopback address)."""

    def __init__(self, proxy: RunningProxy, path: str, token: str | None = None, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=1, source_address=(source, 0))
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nAccept: text/event-stream\r\n{auth}"
        self.sock.sendall(f"{request}Connection: close\r\n\r\n".encode())
        self.data = b""
        deadline = time.monotonic() + 30
        while b"\r\n\r\n" not in self.data:
            assert self._read(deadline) != b"", "no answer"
        head, _, self.body = self.data.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        if self.status == 200:
            self.wait_for(b"session_id=")
            found = re.search(rb"session_id=([A-Za-z0-9_-]+)", self.data)
            assert found is not None
            self.session = found.group(1).decode()
        else:
            self.read_to_end()
            self.close()  # a refusal ends the connection: nothing to hold open

    def _read(self, deadline: float) -> bytes | None:
        """The next bytes (b"" at the end of the stream); None if none came in a second."""
        assert time.monotonic() < deadline, f"nothing more after {self.data[-300:]!r}"
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return None
        self.data += chunk
        return chunk

    def wait_for(self, marker: bytes, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while marker not in self.data:
            assert self._read(deadline) != b"", f"the stream ended before {marker!r}"

    def read_to_end(self, within: float = 30) -> float:
        """Read until the server closes the connection; the seconds that took."""
        started = time.monotonic()
        while self._read(started + within) != b"":
            pass
        self.body = self.data.partition(b"\r\n\r\n")[2]
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def initialized(proxy: RunningProxy, name: str, mcp_id: str = "x") -> str:
    """A session that finished its handshake (initialize, then notifications/initialized)."""
    response = initialize(proxy, name, mcp_id)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    sent = httpx2.post(proxy.url(mcp_id), headers={**headers(name), "Mcp-Session-Id": session}, json=note)
    assert sent.status_code == 202
    return session


@contextlib.contextmanager
def listening(proxy: RunningProxy, name: str, session: str, mcp_id: str = "x") -> Iterator[None]:
    """Hold the session's standalone GET stream open (a busy session)."""
    get_headers = {**headers(name), "Mcp-Session-Id": session, "Accept": "text/event-stream"}
    with httpx2.stream("GET", proxy.url(mcp_id), headers=get_headers, timeout=30) as stream:
        assert stream.status_code == 200
        yield


def ping(proxy: RunningProxy, name: str, session: str, mcp_id: str = "x") -> int:
    body = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
    sent = httpx2.post(proxy.url(mcp_id), headers={**headers(name), "Mcp-Session-Id": session}, json=body)
    return sent.status_code


def test_a_principal_whose_sessions_are_all_busy_gets_429_while_others_still_open(proxy: RunningProxy) -> None:
    first, second = initialized(proxy, "alice"), initialized(proxy, "alice")
    with listening(proxy, "alice", first), listening(proxy, "alice", second):
        third = initialize(proxy, "alice")
        assert_too_many(third.status_code, third.content)
        # x allows CAP + 1 sessions: without the cap alice's third would have taken bob's slot.
        bob = initialize(proxy, "bob")
        assert bob.status_code == 200, bob.text
    assert ping(proxy, "alice", first) == ping(proxy, "alice", second) == 200, "a refusal closes nothing"
    delete(proxy, "alice", first)
    again = initialize(proxy, "alice")
    assert again.status_code == 200, "ending a session frees its slot"
    for name, session in (("alice", second), ("alice", again.headers["mcp-session-id"])):
        delete(proxy, name, session)
    delete(proxy, "bob", bob.headers["mcp-session-id"])


def test_at_its_cap_a_principal_replaces_its_own_least_recently_used_idle_session(proxy: RunningProxy) -> None:
    """A client that never sends DELETE does not lock itself out until its sessions expire."""
    older, newer = initialized(proxy, "frank"), initialized(proxy, "frank", "y")
    assert ping(proxy, "frank", older) == 200  # now `newer` is the least recently used
    bystander = initialized(proxy, "bob")
    third = initialized(proxy, "frank")
    assert ping(proxy, "frank", newer, "y") == 404, "the least recently used idle session made room"
    assert ping(proxy, "frank", older) == 200
    assert ping(proxy, "bob", bystander) == 200, "another principal's session is never touched"
    for name, session, mcp_id in (("frank", older, "x"), ("frank", third, "x"), ("bob", bystander, "x")):
        delete(proxy, name, session, mcp_id)


def test_legacy_streams_count_across_mcps_and_close_without_initialize(proxy: RunningProxy) -> None:
    streams = [SseStream(proxy, "/mcp/x/sse", TOKENS["carol"]), SseStream(proxy, "/mcp/y/sse", TOKENS["carol"])]
    try:
        assert [s.status for s in streams] == [200, 200]
        refused = initialize(proxy, "carol", "y")
        assert_too_many(refused.status_code, refused.content)
        over = SseStream(proxy, "/mcp/x/sse", TOKENS["carol"])
        assert_too_many(over.status, over.body)
        waited = [stream.read_to_end() for stream in streams]
        assert max(waited) < INIT_TIMEOUT + 15, "a stream that never initializes is closed after init_timeout"
        assert max(waited) > INIT_TIMEOUT / 2, "and not at once"
        again = initialize(proxy, "carol", "y")
        assert again.status_code == 200, "the expired streams freed their slots"
        delete(proxy, "carol", again.headers["mcp-session-id"], "y")
    finally:
        for stream in streams:
            stream.close()


def test_an_initialized_legacy_stream_outlives_init_timeout(proxy: RunningProxy) -> None:
    stream = SseStream(proxy, "/mcp/x/sse", TOKENS["dave"])
    try:
        assert stream.status == 200
        url = proxy.url("x", f"/messages?session_id={stream.session}")
        sent = httpx2.post(url, headers=headers("dave"), json=INIT, timeout=30)
        assert sent.status_code == 202
        stream.wait_for(b"mcp-barbican-demo")
        time.sleep(INIT_TIMEOUT + 1)
        ping = httpx2.post(url, headers=headers("dave"), json={"jsonrpc": "2.0", "id": 77, "method": "ping"})
        assert ping.status_code == 202
        stream.wait_for(b'"id":77')
    finally:
        stream.close()
    # The client went away: once the proxy notices, the slot is free again (dave may hold CAP streams).
    held = [SseStream(proxy, "/mcp/y/sse", TOKENS["dave"])]
    deadline = time.monotonic() + 15
    try:
        while len(held) < CAP and time.monotonic() < deadline:
            stream = SseStream(proxy, "/mcp/y/sse", TOKENS["dave"])
            if stream.status == 200:
                held.append(stream)
            else:
                time.sleep(0.1)
        assert [s.status for s in held] == [200] * CAP
    finally:
        for stream in held:
            stream.close()


def test_callers_without_authentication_count_per_address(proxy: RunningProxy) -> None:
    here = [SseStream(proxy, "/mcp/open/sse") for _ in range(CAP)]
    try:
        assert [s.status for s in here] == [200] * CAP
        over = SseStream(proxy, "/mcp/open/sse")
        assert_too_many(over.status, over.body)
        elsewhere = SseStream(proxy, "/mcp/open/sse", source="127.0.0.2")
        assert elsewhere.status == 200, "another address has its own count"
        elsewhere.close()
    finally:
        for stream in here:
            stream.close()


def test_a_legacy_stream_whose_initialize_failed_still_expires(proxy: RunningProxy) -> None:
    stream = SseStream(proxy, "/mcp/down/sse", TOKENS["erin"])
    try:
        assert stream.status == 200
        url = proxy.url("down", f"/messages?session_id={stream.session}")
        assert httpx2.post(url, headers=headers("erin"), json=INIT, timeout=30).status_code == 202
        stream.wait_for(b'"error"')  # the upstream is down: no session came of it
        assert stream.read_to_end() < 2 * INIT_TIMEOUT + 15
    finally:
        stream.close()
