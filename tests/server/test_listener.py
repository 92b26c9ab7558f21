"""The listener's own limits (`server.limits`) against a real proxy, over raw sockets.

Timeouts are 2 s here; closures are awaited for up to 15 s (the machine is shared), and clients
that keep making progress are kept well inside the timeouts so that a slow test host cannot
make them look stalled.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import orjson
import pytest

from tests.proxy import AUTH_HEADER, TOKEN, RunningProxy, demo_mcp, free_port, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

TIMEOUT: Final = 2.0
CLOSE_WAIT: Final = 15.0


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    limits = {"header_timeout": f"{TIMEOUT:g}s", "body_timeout": f"{TIMEOUT:g}s"}
    with run_proxy(tmp_path_factory.mktemp("listener"), [demo_mcp("demo")], server={"limits": limits}) as running:
        yield running


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WAIT)
    _pending.pop(sock.fileno(), None)
    return sock


def head(proxy: RunningProxy, path: str = "/healthz", method: str = "GET", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n".encode() + extra


Response = tuple[int, dict[str, str], bytes]
#: Bytes read past the response returned, per socket (pipelined answers arrive together).
_pending: dict[int, bytes] = {}


def read_response(sock: socket.socket) -> Response | None:
    """The next response with a Content-Length body; None if the connection closes first."""
    data = _pending.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        if not chunk:
            return None
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        rest += chunk
    _pending[sock.fileno()] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def wait_closed(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the proxy closes the connection, and what it sent before; fails if it stays open."""
    start = time.monotonic()
    sock.settimeout(CLOSE_WAIT)
    received = b""
    while True:
        try:
            chunk = _recv(sock)
        except TimeoutError:
            pytest.fail(f"the proxy kept the connection open for {CLOSE_WAIT}s")
        if not chunk:
            return time.monotonic() - start, received
        received += chunk


def still_open(sock: socket.socket) -> bool:
    """True if the connection is open (data waiting or none yet), False if the proxy closed it."""
    sock.settimeout(0.2)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return False
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def refusal(response: Response | None) -> tuple[int, str, str]:
    assert response is not None, "closed without an answer"
    status, headers, body = response
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    payload = json.loads(body)
    return status, payload["error"], payload["message"]


# ---------------------------------------------------------------------------------------------
# The head's size and header count: 431 before any routing


def test_a_huge_header_is_refused_before_it_ends(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy) + b"X-Big: " + b"a" * 100_000)  # the head never ends
        status, error, message = refusal(read_response(sock))
        assert (status, error) == (431, "header_fields_too_large")
        assert "server.limits.max_header_bytes (16384 bytes)" in message
        wait_closed(sock)


@pytest.mark.parametrize(
    ("headers", "limit"),
    [
        pytest.param(20_000, "max_header_bytes", id="20000-headers-on-healthz"),
        pytest.param(101, "max_headers", id="one-over-max-headers"),
    ],
)
def test_too_many_headers_are_refused(proxy: RunningProxy, headers: int, limit: str) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy) + b"".join(b"X-%d: v\r\n" % n for n in range(headers)) + b"\r\n")
        status, _error, message = refusal(read_response(sock))
        assert status == 431
        assert f"server.limits.{limit}" in message
        wait_closed(sock)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"".join(b"X-%d: v\r\n" % n for n in range(98)), id="99-headers"),
        pytest.param(b"X-Big: " + b"a" * 15_000 + b"\r\n", id="15KiB-header"),
    ],
)
def test_a_head_within_the_limits_is_served(proxy: RunningProxy, extra: bytes) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy, extra=extra) + b"\r\n")
        response = read_response(sock)
        assert response is not None and response[0] == 200


def test_a_small_head_with_a_big_body_in_the_same_read_is_served(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        body = b"x" * 60_000  # the read holds more than max_header_bytes; the head itself is small
        sock.sendall(head(proxy, method="POST", extra=b"Content-Length: %d\r\n" % len(body)) + b"\r\n" + body)
        response = read_response(sock)
        assert response is not None and response[0] == 200


def test_the_next_head_on_a_keep_alive_connection_is_bounded_too(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy) + b"\r\n")
        first = read_response(sock)
        assert first is not None and first[0] == 200
        sock.sendall(head(proxy) + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert refusal(read_response(sock))[0] == 431


def test_a_pipelined_head_is_measured_too(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        small = head(proxy) + b"\r\n"
        sock.sendall(small + small + head(proxy) + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        statuses = []
        while (response := read_response(sock)) is not None:
            statuses.append(response[0])
    assert statuses == [200, 200, 431]


def test_pipelined_requests_within_the_limits_are_served(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        small = head(proxy) + b"\r\n"
        sock.sendall(small + small + head(proxy) + b"X-Big: " + b"a" * 15_000 + b"\r\n\r\n")
        statuses = [response[0] for response in (read_response(sock) for _ in range(3)) if response is not None]
    assert statuses == [200, 200, 200]


# ---------------------------------------------------------------------------------------------
# Slowloris: heads and bodies that stop


def test_a_half_sent_head_is_closed_after_header_timeout(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy) + b"X-Half: ")
        elapsed, received = wait_closed(sock)
    assert elapsed >= TIMEOUT * 0.7
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in received


def test_a_half_sent_second_head_on_a_keep_alive_connection_is_closed_too(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy) + b"\r\n")
        first = read_response(sock)
        assert first is not None and first[0] == 200
        time.sleep(TIMEOUT)  # idle time is not head time
        sock.sendall(head(proxy) + b"X-Half: ")
        elapsed, received = wait_closed(sock)
    assert elapsed >= TIMEOUT * 0.7
    assert received.startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        elapsed, received = wait_closed(sock)
    assert elapsed >= TIMEOUT * 0.7
    assert received == b""  # nothing was asked, so nothing is answered


def test_a_post_stalled_mid_body_is_closed_after_body_timeout(proxy: RunningProxy) -> None:
    body = orjson.dumps(INIT)
    fields = {**MCP_HEADERS, "Content-Length": str(len(body))}
    extra = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy, "/mcp/demo", "POST", extra) + b"\r\n" + body[:20])
        elapsed, received = wait_closed(sock)
    assert elapsed >= TIMEOUT * 0.7
    assert received == b""


# ---------------------------------------------------------------------------------------------
# What the timeouts must not cut


def test_a_slow_head_that_completes_in_time_is_served(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        for piece in (head(proxy), b"X-Slow: 1\r\n", b"X-Slow: 2\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.2)
        response = read_response(sock)
        assert response is not None and response[0] == 200


def test_a_slow_body_that_keeps_coming_is_served(proxy: RunningProxy) -> None:
    body = orjson.dumps(INIT)
    fields = {**MCP_HEADERS, "Content-Length": str(len(body))}
    extra = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy, "/mcp/demo", "POST", extra) + b"\r\n")
        pieces = [body[i : i + 20] for i in range(0, len(body), 20)]
        started = time.monotonic()
        for piece in pieces:
            time.sleep(0.4)  # well inside body_timeout each, longer than it in total
            sock.sendall(piece)
        assert time.monotonic() - started > TIMEOUT
        received = b""
        while b"serverInfo" not in received:
            chunk = _recv(sock)
            assert chunk, f"closed: {received!r}"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_follows_timeout_keep_alive(proxy: RunningProxy) -> None:
    with connect(proxy.port) as sock:
        for _ in range(2):
            sock.sendall(head(proxy) + b"\r\n")
            response = read_response(sock)
            assert response is not None and response[0] == 200
            time.sleep(TIMEOUT * 2)  # idle: longer than header_timeout, shorter than keep-alive (30 s)


def test_a_long_lived_sse_stream_stays_open(proxy: RunningProxy) -> None:
    answer = httpx2.post(proxy.url("demo"), headers=MCP_HEADERS, json=INIT)
    assert answer.status_code == 200
    fields = {
        **AUTH_HEADER,
        "Accept": "text/event-stream",
        "Mcp-Session-Id": answer.headers["mcp-session-id"],
        "Mcp-Protocol-Version": "2025-11-25",
    }
    extra = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy, "/mcp/demo", extra=extra) + b"\r\n")
        first = _recv(sock)
        assert first.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in first
        time.sleep(TIMEOUT * 2.5)  # past both timeouts
        assert still_open(sock)


# ---------------------------------------------------------------------------------------------
# max_connections


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[tuple[RunningProxy, int]]:
    admin_port = free_port()
    server: dict[str, Any] = {
        "limits": {"max_connections": 3, "header_timeout": "60s"},
        "admin": {"port": admin_port, "token": TOKEN + "-admin"},
    }
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as running:
        yield running, admin_port


def served(sock: socket.socket, proxy: RunningProxy) -> bool:
    sock.sendall(head(proxy) + b"\r\n")
    response = read_response(sock)
    return response is not None and response[0] == 200


def admitted(proxy: RunningProxy) -> socket.socket:
    """A served keep-alive connection (retried while the start-up probes' connections are still counted)."""
    deadline = time.monotonic() + CLOSE_WAIT
    while time.monotonic() < deadline:
        sock = connect(proxy.port)
        with contextlib.suppress(OSError):
            if served(sock, proxy):
                return sock
        sock.close()
        time.sleep(0.1)
    pytest.fail("no connection was admitted")


def test_connections_over_max_connections_are_refused_at_once(capped: tuple[RunningProxy, int]) -> None:
    proxy, admin_port = capped
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(admitted(proxy)) for _ in range(3)]  # served, and kept alive
        with connect(proxy.port) as extra:
            started = time.monotonic()
            elapsed, received = wait_closed(extra)
        assert time.monotonic() - started < 5
        # A 503 JSON, unless the close overtook it (the request is never read).
        assert received == b"" or (received.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in received)
        # Another listener (the admin one) counts its own connections.
        with connect(admin_port) as admin:
            assert served(admin, proxy)
        held.pop().close()
        admitted(proxy).close()  # the freed slot goes to a new connection
    assert "server.limits.max_connections (3) reached" in proxy.log_text()


def test_a_refused_head_counts_as_an_input_limit_rejection(capped: tuple[RunningProxy, int]) -> None:
    proxy, admin_port = capped
    with connect(proxy.port) as sock:
        sock.sendall(head(proxy) + b"".join(b"X-%d: v\r\n" % n for n in range(200)) + b"\r\n")
        assert refusal(read_response(sock))[0] == 431
    answer = httpx2.get(
        f"http://127.0.0.1:{admin_port}/admin/security/metrics", headers={"Authorization": f"Bearer {TOKEN}-admin"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["requests_rejected_limits"] == 1
