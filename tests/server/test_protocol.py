"""The fast response head writes exactly what uvicorn's own cycle writes, and refuses what it refuses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from mcp_barbican.asgi import HEAD_HEADERS_EXTENSION, RESPONSE_HEADERS_KEY, HeadHeaders
from mcp_barbican.config import ProxyConfig, validate_model
from mcp_barbican.server.protocol import BarbicanHttpProtocol, FastHeadCycle, status_line
from mcp_barbican.server.runner import uvicorn_config

Headers = list[tuple[bytes, bytes]]


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Flow:
    write_paused = False


def cycle(kind: type[RequestResponseCycle], method: str, *, keep_alive: bool, defaults: Headers) -> Any:
    fakes: dict[str, Any] = {"transport": Transport(), "flow": Flow()}
    return kind(
        scope={"type": "http", "method": method},  # type: ignore[typeddict-item]
        **fakes,
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=defaults,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )


def state(c: Any) -> tuple[Any, ...]:
    return (
        b"".join(c.transport.written),
        c.keep_alive,
        c.chunked_encoding,
        c.expected_content_length,
        c.response_started,
        c.transport.closed,
    )


async def exchange(kind: type[RequestResponseCycle], status: int, headers: Headers, body: bytes, **kw: Any) -> Any:
    c = cycle(kind, **kw)
    await c.send({"type": "http.response.start", "status": status, "headers": headers})
    await c.send({"type": "http.response.body", "body": body, "more_body": False})
    return state(c)


SSE: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"mcp-session-id", b"a1")]
SECURITY: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-xss-protection", b"0"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
]

CASES = [
    pytest.param(200, SSE + SECURITY, b"data: {}\n\n", "POST", True, [], id="sse-chunked"),
    pytest.param(
        200,
        [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")],
        b"{}",
        "GET",
        True,
        [],
        id="mixed-case-length",
    ),
    pytest.param(202, [(b"content-length", b"0")], b"", "POST", True, [], id="accepted-empty"),
    pytest.param(204, [], b"", "DELETE", True, [], id="no-content"),
    pytest.param(304, [(b"etag", b'"x"')], b"", "GET", True, [], id="not-modified"),
    pytest.param(200, [(b"content-length", b"3")], b"", "HEAD", True, [], id="head"),
    pytest.param(200, [(b"transfer-encoding", b"Chunked")], b"abc", "POST", True, [], id="explicit-chunked"),
    pytest.param(200, [(b"connection", b"keep-alive, Close")], b"x", "GET", True, [], id="app-closes"),
    pytest.param(200, [(b"content-length", b"1")], b"x", "GET", False, [], id="http10-close-added"),
    pytest.param(200, [(b"content-length", b"1")], b"x", "GET", False, [(b"connection", b"close")], id="close-twice"),
    pytest.param(200, [], b"", "GET", True, [(b"server", b"barbican"), (b"date", b"now")], id="defaults-first"),
    pytest.param(499, [(b"content-length", b"0")], b"", "GET", True, [], id="unknown-status"),
    pytest.param(200, [(b"x-tab", b"a\tb")], b"", "GET", True, [], id="tab-in-value"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "headers", "body", "method", "keep_alive", "defaults"), CASES)
async def test_same_bytes_and_state_as_uvicorn(
    status: int, headers: Headers, body: bytes, method: str, keep_alive: bool, defaults: Headers
) -> None:
    kw = {"method": method, "keep_alive": keep_alive, "defaults": defaults}
    theirs = await exchange(RequestResponseCycle, status, headers, body, **kw)
    ours = await exchange(FastHeadCycle, status, headers, body, **kw)
    assert ours == theirs


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [(b"bad name", b"x")],
        [(b"x-ok", b"v"), (b"bad:name", b"x")],
        [(b"x", b"line\r\nset-cookie: a=b")],
        [(b"x-ok", b"v"), (b"x", b"nul\x00")],
        [(b"x", b"del\x7f")],
    ],
)
async def test_refuses_what_uvicorn_refuses(headers: Headers) -> None:
    for kind in (RequestResponseCycle, FastHeadCycle):
        c = cycle(kind, "GET", keep_alive=True, defaults=[])
        with pytest.raises(RuntimeError, match="Invalid HTTP header"):
            await c.send({"type": "http.response.start", "status": 200, "headers": headers})
        assert c.transport.written == []


@pytest.mark.parametrize("status", [100, 200, 404, 418, 429, 599])
def test_status_line_matches_uvicorn(status: int) -> None:
    assert status_line(status) == STATUS_LINE[status]


def test_the_runner_serves_through_it_with_the_configured_limits() -> None:
    limits = {"max_header_bytes": "8KiB", "max_headers": 50, "header_timeout": "3s", "body_timeout": "4s"}
    config = validate_model(
        ProxyConfig,
        {
            "server": {"storage": {"type": "memory"}, "limits": {**limits, "max_connections": 7}},
            "mcps": [{"id": "a", "command": "true", "auth": {"type": "none"}}],
        },
    )
    server_config, _core = uvicorn_config(config)
    http = server_config.http
    assert isinstance(http, type) and issubclass(http, BarbicanHttpProtocol)
    assert (http.max_header_bytes, http.max_headers, http.header_timeout, http.body_timeout) == (8192, 50, 3.0, 4.0)
    assert http.guard.limits.max_connections == 7
    assert server_config.ws == "none"
    # Each config gets its own class: connection counts are never shared between servers.
    assert uvicorn_config(config)[0].http is not http


@pytest.mark.anyio
@pytest.mark.parametrize("paused", [False, True], ids=["fast-path", "uvicorn-path"])
@pytest.mark.parametrize("app_cache_control", [False, True], ids=["block", "one-by-one"])
async def test_headers_from_the_scope_join_the_head_unless_the_app_set_them(
    paused: bool, app_cache_control: bool
) -> None:
    extra = HeadHeaders([(b"cache-control", b"no-store"), *SECURITY])
    app_headers: Headers = [(b"content-type", b"text/event-stream")]
    if app_cache_control:
        app_headers.append((b"Cache-Control", b"no-cache"))
    ours = cycle(FastHeadCycle, "POST", keep_alive=True, defaults=[(b"server", b"x")])
    ours.scope[RESPONSE_HEADERS_KEY] = extra
    if paused:
        ours.flow.write_paused = True  # uvicorn's own path (it waits to drain, then writes)

        async def drained() -> None:
            ours.flow.write_paused = False

        ours.flow.drain = drained
    await ours.send({"type": "http.response.start", "status": 200, "headers": app_headers})
    theirs = cycle(RequestResponseCycle, "POST", keep_alive=True, defaults=[(b"server", b"x")])
    expected = [*app_headers, *([] if app_cache_control else [(b"cache-control", b"no-store")]), *SECURITY]
    await theirs.send({"type": "http.response.start", "status": 200, "headers": expected})
    assert b"".join(ours.transport.written) == b"".join(theirs.transport.written)
    # The app's own Cache-Control wins.
    assert (b"no-store" in b"".join(ours.transport.written)) is not app_cache_control


@pytest.mark.parametrize(
    "headers",
    [[(b"bad name", b"v")], [(b"x-ok", b"line\r\nbreak")], [(b"content-length", b"3")], [(b"connection", b"close")]],
    ids=["space-in-name", "crlf-in-value", "framing", "connection"],
)
def test_head_headers_refuse_what_the_head_must_not_carry(headers: Headers) -> None:
    with pytest.raises(ValueError):
        HeadHeaders(headers)


@pytest.mark.anyio
async def test_security_headers_use_the_extension_instead_of_wrapping_send() -> None:
    from mcp_barbican.config import HeadersConfig
    from mcp_barbican.security.headers import SecurityHeaders

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope.get(RESPONSE_HEADERS_KEY), send))

    async def send(message: Any) -> None:
        return None

    layer = SecurityHeaders(app, config=HeadersConfig())
    with_extension = {"type": "http", "path": "/", "extensions": {HEAD_HEADERS_EXTENSION: {}}}
    await layer(with_extension, None, send)  # type: ignore[arg-type]
    await layer({"type": "http", "path": "/"}, None, send)  # type: ignore[arg-type]
    (listed, plain_send), (unlisted, wrapped_send) = seen
    assert (b"x-content-type-options", b"nosniff") in listed.headers
    assert plain_send is send, "no wrapper when the server adds the headers"
    assert unlisted is None
    assert wrapped_send is not send, "other servers still get the headers through a send wrapper"
