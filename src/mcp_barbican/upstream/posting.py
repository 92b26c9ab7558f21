"""A lean HTTP/1.1 client for the POSTs of one Streamable HTTP channel.

Through aiohttp (request and response objects, header multidicts, a StreamReader and a task
per answer) the HTTP hop cost about as much proxy CPU as the whole rest of a proxied call
(docs/performance.md, "HTTP upstream CPU"). This client does one thing: send a prebuilt
request head plus body on a pooled keep-alive connection and hand the answer back as a head
(status, the headers the channel reads) followed by body callbacks, parsed by httptools
(llhttp) in the protocol's `data_received`. No redirects are followed, no compression is
asked for, interim (1xx) answers are refused.

Bounds: at most `limit` connections (callers wait up to the connect timeout for a free one),
a response head of at most MAX_HEAD_BYTES (and as much unparsed framing: a header or trailer
that never ends), connecting (TCP and TLS) within `connect_timeout`; idle connections are
closed after KEEPALIVE_SECONDS. The body size is the caller's to bound, and so is the time an
answer may take (the core times requests out; closing the channel drops its connections).
A connection that answered in a way we cannot trust (bytes after the response, a parse error,
an abort) is closed, never reused. A POST on a reused connection that the server closed before
sending a single byte (its keep-alive ran out) is sent once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import ssl
from collections.abc import Callable, Mapping
from typing import Final, cast

import aiohttp
import httptools
from aiohttp.abc import AbstractResolver
from yarl import URL

from mcp_barbican import __version__
from mcp_barbican.exceptions import UpstreamClosed, UpstreamUnavailable

__all__ = ["KEPT_HEADERS", "MAX_HEAD_BYTES", "Exchange", "HeadHandler", "PostPool", "request_head"]

#: Largest response head (status line and headers) accepted.
MAX_HEAD_BYTES: Final = 64 * 1024
KEEPALIVE_SECONDS: Final = 30.0
#: The response headers anyone reads (the others are only counted against MAX_HEAD_BYTES).
KEPT_HEADERS: Final = frozenset({b"content-type", b"content-length", b"transfer-encoding", b"mcp-session-id"})

USER_AGENT: Final = f"mcp-barbican/{__version__}"
_FORBIDDEN: Final = frozenset("\r\n\x00")

BodyHandler = Callable[[bytes], None]


def request_head(url: URL, headers: Mapping[str, str]) -> bytes:
    """A POST's request line and headers for `url`, without Content-Length and the blank line.

    Credentials in the URL become Basic authentication unless `headers` set Authorization.
    Raises UpstreamClosed for a header that would break the head (a line break or NUL).
    """
    lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    names = set()
    for name, value in headers.items():
        if not _FORBIDDEN.isdisjoint(name) or not _FORBIDDEN.isdisjoint(value) or ":" in name:
            raise UpstreamClosed(f"the header {name!r} cannot be sent: it holds a line break or NUL")
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    if url.user is not None and "authorization" not in names:
        token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    lines.append("")
    return "\r\n".join(lines).encode()


EndHandler = Callable[[str | None], None]
#: Called once per request: (the response, None, False) at its head, or (None, why, retryable)
#: when the exchange broke first; retryable means the server closed a reused connection before
#: sending a byte (its keep-alive ran out), so the request can go again on a fresh one.
HeadHandler = Callable[["Exchange | None", str | None, bool], None]


class Exchange:
    """One response: its head once `PostPool.post` returns, its body through `attach()`."""

    __slots__ = ("_buffered", "_conn", "_end", "_ended", "_on_data", "_on_end", "headers", "reason", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = 0
        self.reason = ""
        #: The KEPT_HEADERS the answer had, names in lower case; repeated headers joined with ", ".
        self.headers: dict[str, str] = {}
        self._buffered: list[bytes] = []
        self._ended = False
        self._end: str | None = None
        self._on_data: BodyHandler | None = None
        self._on_end: EndHandler | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def attach(self, on_data: BodyHandler, on_end: EndHandler) -> None:
        """Receive the body: `on_data(chunk)` per chunk, then `on_end(None)`, or `on_end(reason)` if it broke."""
        buffered, self._buffered = self._buffered, []
        for chunk in buffered:
            on_data(chunk)
        if self._ended:
            on_end(self._end)
            return
        self._on_data = on_data
        self._on_end = on_end

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (the rest is dropped); the caller bounds the wait."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        parts: list[bytes] = []
        size = 0

        def data(chunk: bytes) -> None:
            nonlocal size
            if size >= limit:
                return
            parts.append(chunk)
            size += len(chunk)
            if size >= limit and not done.done():
                done.set_result(None)

        def end(_: str | None) -> None:
            if not done.done():
                done.set_result(None)

        self.attach(data, end)
        await done
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done with this response: an unfinished one closes its connection."""
        conn, self._conn = self._conn, None
        self._on_data = self._on_end = None
        if conn is not None and not self._ended:
            conn.abort("released before the end of the response")

    # called by the connection

    def _data(self, chunk: bytes) -> None:
        if self._on_data is not None:
            self._on_data(chunk)
        elif self._conn is not None:
            self._buffered.append(chunk)

    def _finish(self, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._end = error
        self._conn = None
        on_end, self._on_data, self._on_end = self._on_end, None, None
        if on_end is not None:
            on_end(error)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time (no pipelining)."""

    def __init__(self, pool: PostPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: Exchange | None = None
        self._on_head: HeadHandler | None = None
        self._parsed_head: Exchange | None = None  # parsed, handed on once the chunk is through the parser
        self._head_size = 0
        self._unparsed = 0  # bytes fed since the parser last got anywhere (headers done, body, end)
        self._delimited = False  # the body has a length or is chunked (else it ends with the connection)
        self._received = False  # any byte of the current answer arrived
        self.closed = False
        self.idle_since = 0.0
        self.used = False

    # -- driving ------------------------------------------------------------------------------

    def begin(self, data: bytes, on_head: HeadHandler) -> None:
        """Send one request; `on_head` hears how it went (never from inside this call)."""
        assert self._transport is not None and self._exchange is None
        self._exchange = Exchange(self)
        self._on_head = on_head
        self._parsed_head = None
        self._head_size = self._unparsed = 0
        self._received = self._delimited = False
        self._transport.write(data)

    @property
    def usable(self) -> bool:
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    def abort(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._fail(reason)
            if self._transport is not None:
                self._transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self._exchange is None:
            self.abort("the upstream sent data without a request")
            return
        self._received = True
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(f"unreadable HTTP answer: {exc.__context__ or exc}")
            return
        if self._unparsed > MAX_HEAD_BYTES:
            # httptools buffers a header (or trailer) until it ends: bound what it may hold
            self.abort(f"unreadable HTTP answer: more than {MAX_HEAD_BYTES} bytes of head or framing")
            return
        self._hand_on_head()

    def eof_received(self) -> bool | None:
        return None  # close the transport: no half-open connections

    def connection_lost(self, exc: Exception | None) -> None:
        if self._exchange is not None and self._on_head is None and not self._delimited:
            self._end_exchange(None)  # a body that runs until the connection closes
        else:
            self._fail("the upstream closed the connection" + (f" ({exc})" if exc else ""))
        self.closed = True
        self._pool._forget(self)

    # -- httptools callbacks ------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise _TooLarge(f"response head exceeds {MAX_HEAD_BYTES} bytes")

    def on_status(self, status: bytes) -> None:
        self._count(len(status))
        if self._exchange is not None:
            self._exchange.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        lowered = name.lower()
        if self._exchange is None or lowered not in KEPT_HEADERS:
            return
        key = lowered.decode("latin-1")
        text = value.decode("latin-1")
        headers = self._exchange.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None or self._on_head is None or self._parsed_head is not None:
            raise _Garbage("a second answer")  # pipelined bytes after the answer
        exchange.status = self._parser.get_status_code()
        if exchange.status < 200:
            raise _Garbage("an interim (1xx) answer")
        headers = exchange.headers
        self._delimited = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        self._delimited = self._delimited or exchange.status in (204, 304)
        self._parsed_head = exchange
        self._unparsed = 0

    def on_body(self, body: bytes) -> None:
        self._unparsed = 0
        if self._exchange is not None:
            self._exchange._data(body)

    def on_message_complete(self) -> None:
        if self._exchange is None:
            raise _Garbage("a second answer")
        self._unparsed = 0
        reusable = self._parser.should_keep_alive()
        self._end_exchange(None)
        if reusable:
            self._pool._idle_again(self)
        elif self._transport is not None:
            self._transport.close()

    # -- internals ----------------------------------------------------------------------------

    def _end_exchange(self, error: str | None) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange._finish(error)

    def _hand_on_head(self) -> None:
        exchange, self._parsed_head = self._parsed_head, None
        if exchange is not None and self._on_head is not None:
            on_head, self._on_head = self._on_head, None
            on_head(exchange, None, False)

    def _fail(self, reason: str) -> None:
        if self._parsed_head is not None:
            self._hand_on_head()  # the head made it: the body breaks below
        elif self._on_head is not None:
            on_head, self._on_head = self._on_head, None
            on_head(None, reason, self.used and not self._received)
        self._end_exchange(reason)


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's verifying context, built once (loading the trust store costs milliseconds)."""
    return ssl.create_default_context()


def _settle(
    head: asyncio.Future[tuple[Exchange | None, str | None, bool]],
    exchange: Exchange | None,
    reason: str | None,
    retry: bool,
) -> None:
    if not head.done():
        head.set_result((exchange, reason, retry))


class _TooLarge(Exception):
    pass


class _Garbage(Exception):
    pass


class PostPool:
    """Keep-alive connections to one origin, for POSTs only."""

    def __init__(
        self,
        url: URL,
        ssl_context: ssl.SSLContext | None,
        *,
        label: str,
        connect_timeout: float,
        limit: int,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._label = label  # the URL as logs may show it
        #: The egress policy's resolver (an MCP registered through the admin API): connect to checked addresses only.
        self._resolver = resolver
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context if ssl_context is not None else _default_context()
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def failed(self, reason: str) -> str:
        """The message for a POST that broke before its answer's head."""
        return f"POST to {self._label} failed: {reason}"

    async def post(self, data: bytes) -> Exchange:
        """Send one request (head and body in `data`); returns at its response's head.

        Raises UpstreamUnavailable when no connection could be made, UpstreamClosed when the
        exchange broke before the head arrived.
        """
        loop = asyncio.get_running_loop()
        for _ in range(2):
            conn = await self.connection()
            head: asyncio.Future[tuple[Exchange | None, str | None, bool]] = loop.create_future()
            conn.begin(data, functools.partial(_settle, head))
            try:
                exchange, reason, retry = await head
            except asyncio.CancelledError:
                conn.abort("the request was cancelled")
                raise
            if exchange is not None:
                return exchange
            if not retry:
                raise UpstreamClosed(self.failed(str(reason)))
        raise UpstreamClosed(self.failed("the upstream closed the connection twice before answering"))

    def idle(self) -> _Connection | None:
        """A kept-alive connection ready for a request, if there is one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
        return None

    async def connection(self) -> _Connection:
        """A connection for one request: `begin()` it at once (raises UpstreamUnavailable, UpstreamClosed)."""
        conn = self.idle()  # the common case: no timeout to arm
        if conn is not None:
            return conn
        waited = False
        try:
            async with asyncio.timeout(self._connect_timeout):
                while True:
                    while self._idle:
                        conn = self._idle.pop()
                        if conn.usable:
                            return conn
                    if self._closed:
                        raise UpstreamClosed("the upstream's connections are closed")
                    if len(self._open) < self._limit:
                        break
                    waited = True
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                waited = False
                conn = _Connection(self)
                self._open.add(conn)
                try:
                    await asyncio.get_running_loop().create_connection(
                        lambda: conn,
                        await self._address(),
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
                except BaseException:
                    self._forget(conn)
                    raise
        except TimeoutError:
            if waited:
                raise UpstreamUnavailable(f"all {self._limit} connections to {self._label} are busy") from None
            raise UpstreamUnavailable(f"cannot reach {self._label}: connecting timed out") from None
        except OSError as exc:  # ssl.SSLError included
            raise UpstreamUnavailable(f"cannot reach {self._label}: {type(exc).__name__}: {exc}") from None
        return conn

    async def _address(self) -> str:
        """Where to connect: the host, or under the egress policy the first address it checked (the pin)."""
        if self._resolver is None:
            return self._host
        try:
            found = await self._resolver.resolve(self._host, self._port)
        except aiohttp.ClientError as exc:  # the egress policy refused every address (EgressRefused)
            raise UpstreamUnavailable(f"cannot reach {self._label}: {exc}") from None
        return str(found[0]["host"])

    def close(self) -> None:
        """Close every connection; busy exchanges end with an error."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._open):
            conn.abort("the upstream channel closed")
        self._open.clear()
        self._idle.clear()

    # called by connections

    def _idle_again(self, conn: _Connection) -> None:
        conn.used = True
        if self._closed:
            conn.abort("the upstream channel closed")
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.append(conn)
        self._wake()
        if self._sweeper is None:
            self._sweeper = loop.call_later(KEEPALIVE_SECONDS, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in [c for c in self._idle if now - c.idle_since >= KEEPALIVE_SECONDS]:
            self._idle.remove(conn)
            conn.abort("idle")
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_SECONDS, self._sweep)
