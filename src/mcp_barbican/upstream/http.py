"""HTTP plumbing shared by the legacy SSE and the Streamable HTTP upstream channels.

- `make_http_session()`: the one aiohttp session of an upstream MCP server, shared by all its
  channels (keep-alive pool, one TLS context, no cookies, no proxy variables from the
  environment). Call it inside the running event loop; the caller closes it.
- `SseParser`: an incremental `text/event-stream` parser (WHATWG rules: CR, LF or CRLF line
  ends, multi-line data, comments, a leading BOM, `id` and `retry` fields) with a bound on
  the size of one event.
- Small helpers for bounded body reads and log-safe URLs.
"""

from __future__ import annotations

import re
import ssl
import weakref
from typing import Final, NamedTuple

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from mcp_barbican import __version__

__all__ = [
    "CONNECTION_LIMIT",
    "MAX_EVENT_BYTES",
    "SseError",
    "SseEvent",
    "SseParser",
    "body_excerpt",
    "excerpt",
    "make_http_session",
    "read_limited",
    "safe_url",
    "session_settings",
]

#: Largest SSE event (or JSON body) accepted from an upstream: results can embed big resources.
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024
#: Connections one upstream's session may hold open at once (SSE streams included).
CONNECTION_LIMIT: Final = 256
#: Seconds an idle keep-alive connection stays in the pool.
KEEPALIVE_SECONDS: Final = 30.0
USER_AGENT: Final = f"mcp-barbican/{__version__}"

_BOM: Final = b"\xef\xbb\xbf"
_WHITESPACE = re.compile(r"\s+")


def make_http_session(
    ssl_context: ssl.SSLContext | None, *, connect_timeout: float, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The session of one upstream MCP server; every channel of that server shares it.

    `ssl_context` is `client_ssl_context()`'s, built when the MCP is set up (its files are read
    then, never on a request); None means aiohttp's default verifying context. Only connecting
    (TCP and TLS handshake) is bounded by `connect_timeout`: reads are not, because SSE streams
    stay idle for long stretches (the core times requests out itself). `resolver`: the egress policy's
    (`Egress.resolver()`) for an MCP registered through the admin API, so it connects to checked addresses only.
    """
    connector = aiohttp.TCPConnector(
        limit=CONNECTION_LIMIT,
        ssl=ssl_context if ssl_context is not None else True,
        keepalive_timeout=KEEPALIVE_SECONDS,
        resolver=resolver,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout, sock_read=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=True,
        headers={"User-Agent": USER_AGENT},
    )
    _SESSION_TLS[session] = SessionSettings(ssl_context, connect_timeout, resolver)
    return session


class SessionSettings(NamedTuple):
    """What make_http_session() was given, for the channels' own POST connections (upstream/posting.py)."""

    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    resolver: AbstractResolver | None


_SESSION_TLS: weakref.WeakKeyDictionary[aiohttp.ClientSession, SessionSettings] = weakref.WeakKeyDictionary()


def session_settings(session: aiohttp.ClientSession) -> SessionSettings:
    """The TLS context (None: the default verifying one), connect timeout and resolver `session` was made with."""
    found = _SESSION_TLS.get(session)
    if found is not None:
        return found
    sock_connect = session.timeout.sock_connect
    return SessionSettings(None, sock_connect if sock_connect is not None else 30.0, None)


def safe_url(url: URL) -> str:
    """`url` without credentials, query or fragment: fit for logs and error messages."""
    if not url.absolute:
        return url.path
    return str(url.with_user(None).with_query(None).with_fragment(None))


async def read_limited(resp: aiohttp.ClientResponse, limit: int = MAX_EVENT_BYTES) -> bytes:
    """The whole body of `resp`, refusing (SseError) a body larger than `limit` bytes."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise SseError(f"response body of {length} bytes exceeds the {limit} byte limit")
        return await resp.read()
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise SseError(f"response body exceeds the {limit} byte limit")
        parts.append(chunk)
    return b"".join(parts)


async def body_excerpt(resp: aiohttp.ClientResponse, limit: int = 512, width: int = 200) -> str:
    """A short, single-line excerpt of an (error) response body; "" when it cannot be read."""
    try:
        raw = await resp.content.read(limit)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    return excerpt(raw, width)


def excerpt(raw: bytes, width: int = 200) -> str:
    """`raw` (part of a body) as one short line."""
    text = _WHITESPACE.sub(" ", raw.decode("utf-8", "replace")).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


class SseError(ValueError):
    """The event stream broke a limit (an event or body larger than allowed)."""


class SseEvent(NamedTuple):
    """One dispatched server-sent event."""

    #: The event type; "message" when the stream named none.
    event: str
    #: The data lines joined with b"\\n", as raw (UTF-8) bytes: JSON parsers take them as-is.
    data: bytes
    #: The `id` field of this event, if it had one (see SseParser.last_event_id for the
    #: spec's "last event ID", which persists across events).
    id: str | None
    #: The `retry` field of this event in milliseconds, if it had a valid one.
    retry: int | None


class SseParser:
    """Incremental `text/event-stream` parser: feed it bytes, get complete events back.

    Chunks may split lines (and CRLF pairs) anywhere. An event whose data, or a single line,
    grows beyond `max_event_bytes` raises SseError; the parser is unusable afterwards. As the
    spec says, an event still incomplete at the end of the stream is discarded, and a block
    without any `data` line dispatches nothing (its `id` and `retry` still take effect).
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_event",
        "_head",
        "_id",
        "_max",
        "_partial",
        "_retry",
        "_size",
        "_skip_lf",
        "dispatched",
        "last_event_id",
        "retry",
    )

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._at_start = True  # a BOM is only skipped at the very start of the stream
        self._head = b""  # the first bytes, while they could still be a split BOM
        self._partial = bytearray()  # an incomplete line carried over to the next chunk
        self._skip_lf = False  # the last chunk ended with CR: drop a leading LF
        self._data: list[bytes] = []
        self._size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        #: The last `id` field seen on the stream (the spec's last event ID buffer).
        self.last_event_id: str | None = None
        #: The last valid `retry` field seen on the stream, in milliseconds.
        self.retry: int | None = None
        #: How many events were dispatched so far.
        self.dispatched = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse `chunk` and return the events it completes (often none or one)."""
        if self._at_start:
            head = self._head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._at_start = False
            self._head = b""
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        events: list[SseEvent] = []
        if self._partial:
            lf = chunk.find(b"\n")
            cr = chunk.find(b"\r")
            if lf < 0 and cr < 0:
                self._partial += chunk
                self._check_partial()
                return events
            end = lf if cr < 0 else cr if lf < 0 else min(lf, cr)
            self._partial += chunk[:end]
            line = bytes(self._partial)
            self._partial.clear()
            if chunk[end] == 0x0D:
                if end + 1 == len(chunk):
                    self._skip_lf = True
                elif chunk[end + 1] == 0x0A:
                    end += 1
            self._line(line, events)
            chunk = chunk[end + 1 :]
            if not chunk:
                return events
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1] not in (0x0A, 0x0D):
            lines.pop()
            self._partial += last
            self._check_partial()
        elif last[-1] == 0x0D:
            self._skip_lf = True  # a CR at the end of the chunk may be the first half of CRLF
        for raw in lines:
            if raw[-1] == 0x0A:
                line = raw[:-2] if len(raw) > 1 and raw[-2] == 0x0D else raw[:-1]
            else:
                line = raw[:-1]
            self._line(line, events)
        return events

    def _check_partial(self) -> None:
        if len(self._partial) + self._size > self._max:
            raise SseError(f"server-sent event exceeds the {self._max} byte limit")

    def _line(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SseEvent(self._event or "message", data, self._id, self._retry))
                self.dispatched += 1
            self._data = []
            self._size = 0
            self._event = self._id = self._retry = None
            return
        colon = line.find(b":")
        if colon == 0:
            return  # a comment (keep-alive)
        if colon < 0:
            field, value = line, b""
        else:
            field = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise SseError(f"server-sent event exceeds the {self._max} byte limit")
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id":
            if b"\x00" not in value:
                self._id = self.last_event_id = value.decode("utf-8", "replace")
        elif field == b"retry":
            if value.isdigit():
                self._retry = self.retry = int(value)
        # any other field is ignored, as the spec says
