"""A lean, pipelined RESP client for the one command on the request path: the rate-limit script.

Measured in the S1 benchmark, redis-py's asyncio client cost about 170 µs of proxy CPU per request
for one EVALSHA: its command packing and reply parsing in Python, a pool checkout, and a socket
write of its own for every command. This client keeps one connection and matches replies in order
(RESP answers in the order it was asked). While commands are on their way, new ones wait and go out
together when the replies come (like Nagle's algorithm), so under load one write and one read carry
many requests' takes. Failures are redis-py's exception types: callers keep one `except RedisError`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

__all__ = ["RespWire", "encode", "parse"]

_CRLF: Final = b"\r\n"
#: A reply larger than this is not one of ours: the connection is dropped rather than buffered on.
MAX_REPLY_BYTES: Final = 1 << 20
_INCOMPLETE: Final = object()


def encode(parts: tuple[bytes | str, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[Any, int]:
    """One reply from `buf` at `pos` and where it ends; `_INCOMPLETE` (at `pos`) when more bytes are needed.

    Errors come back as ResponseError values (not raised), so one failed command fails only its caller.
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind, line, after = buf[pos : pos + 1], bytes(buf[pos + 1 : end]), end + 2
    if kind == b"+":
        return line, after
    if kind == b"-":
        return ResponseError(line.decode(errors="replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return _INCOMPLETE, pos
        return bytes(buf[after : after + size]), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse(buf, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    raise ConnectionError(f"Redis sent a reply this client does not read ({kind!r})")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out: list[bytes] = []
        #: Commands written and not answered yet: while there are any, new ones wait and go out together.
        self._inflight = 0
        self._scheduled = False
        self._buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's are not asyncio.Transport subclasses

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise ConnectionError("the Redis connection is closed")
        if not self._inflight and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if self._out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._out))
            self._inflight += len(self._out)
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        pos = 0
        try:
            while self.pending:
                reply, end = parse(self._buffer, pos)
                if reply is _INCOMPLETE:
                    break
                pos = end
                self._inflight -= 1
                future = self.pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (ValueError, ConnectionError) as exc:
            self.abort(f"unreadable reply: {exc}")
            return
        del self._buffer[:pos]
        if len(self._buffer) > MAX_REPLY_BYTES or (self._buffer and not self.pending):
            self.abort("Redis sent more than was asked")
        elif not self._inflight and self._out and not self._scheduled:
            self._flush()  # what waited for those replies goes out in one write

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"the Redis connection was lost{f': {exc}' if exc else ''}")

    def abort(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.closed = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(ConnectionError(reason))


class RespWire:
    """One pipelined connection to the Redis at `url` (redis:// or rediss://), opened on first use and again
    after a failure; every reply within `timeout` seconds, else the connection is dropped."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 6379
        path = parts.path.strip("/")
        self._db = int(path) if path.isdigit() else 0
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password is not None else None
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        self._ssl = _ssl_context(options) if parts.scheme == "rediss" else None
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._conn: _Connection | None = None
        self._opening: asyncio.Lock | None = None
        self._scripts: dict[str, bytes] = {}

    async def script(self, source: str, keys: list[str], args: list[str]) -> Any:
        """Run a Lua script by its SHA-1, loading it (EVAL) when Redis does not know it yet."""
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()
        tail = (str(len(keys)), *keys, *args)
        reply = await self.call(b"EVALSHA", sha, *tail)
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            reply = await self.call(b"EVAL", source, *tail)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def call(self, *parts: bytes | str) -> Any:
        """The reply to one command (a ResponseError value when Redis refused it)."""
        conn = self._conn if self._conn is not None and not self._conn.closed else await self._connect()
        future = conn.send(encode(parts))
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            conn.abort("no reply in time")
            raise RedisTimeout(f"Redis did not answer within {self._timeout:g}s") from None

    async def _connect(self) -> _Connection:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, conn = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
                    self._conn = conn
                    await self._hello(conn)
            except TimeoutError:
                raise RedisTimeout(f"connecting to Redis at {self._host}:{self._port} timed out") from None
            except OSError as exc:
                raise ConnectionError(f"cannot reach Redis at {self._host}:{self._port}: {exc}") from None
            return conn

    async def _hello(self, conn: _Connection) -> None:
        setup: list[tuple[bytes | str, ...]] = []
        if self._password is not None:
            setup.append((b"AUTH", self._username, self._password) if self._username else (b"AUTH", self._password))
        if self._db:
            setup.append((b"SELECT", str(self._db)))
        for command in setup:
            reply = await conn.send(encode(command))
            if isinstance(reply, ResponseError):
                conn.abort("setup refused")
                name = command[0]
                raise ConnectionError(f"Redis refused {name.decode() if isinstance(name, bytes) else name}: {reply}")

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.abort("closed")
            self._conn = None


def _ssl_context(options: dict[str, str]) -> ssl.SSLContext:
    """The TLS of a rediss:// URL, with redis-py's query options (ssl_ca_certs, ssl_certfile, ssl_keyfile,
    ssl_cert_reqs=none)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_cert_reqs", "").lower() == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
