"""The listener's one protocol class: uvicorn's httptools protocol with a cheaper response head,
the scope extensions (head headers, and `tls` on TLS connections) and `server.limits`.

uvicorn checks and serialises response headers one at a time, two regular-expression
searches and a few comparisons each: about 0.7 µs per header on the bench machine, so the
eight security headers alone cost more than every security decision together. This
protocol writes the status line and headers itself: the same checks (every name a token,
no control character in a value) run once over all names and once over all values, and
`Content-Length`, `Transfer-Encoding` and `Connection` get uvicorn's meaning. Everything
else (the body, flow control, keep-alive, pipelining, disconnects) stays uvicorn's.
Tests compare the bytes written with uvicorn's own for a table of responses.

`BarbicanHttpProtocol` also bounds what a connection holds before the app sees it (its
docstring says how); `listener_protocol(limits)` is the class the runner gives uvicorn.
"""

from __future__ import annotations

import asyncio
import http
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mcp_barbican.asgi import (
    BAD_NAME,
    BAD_VALUE,
    FRAMING_HEADERS,
    HEAD_HEADERS_EXTENSION,
    RESPONSE_HEADERS_KEY,
    STOPPING_EXTENSION,
    HeadHeaders,
)
from mcp_barbican.config import ListenerLimits
from mcp_barbican.security.limits import header_bytes
from mcp_barbican.server.listener import ListenerGuard
from mcp_barbican.server.tls import tls_scope_extension

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

    from mcp_barbican.security.counters import SecurityCounters

__all__ = [
    "BarbicanHttpProtocol",
    "FastHeadCycle",
    "listener_protocol",
    "refusal",
    "status_line",
]

_NO_BODY_STATUSES: Final = frozenset((204, 304))


def status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {status: status_line(status) for status in range(100, 600)}


class FastHeadCycle(RequestResponseCycle):
    """A request/response cycle whose `http.response.start` is written in one pass."""

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] != "http.response.start" or self.response_started or self.disconnected:
            await super().send(message)
            return
        headers = [*self.default_headers, *message.get("headers", ())]
        names = [name.lower() for name, _ in headers]
        extra = cast("HeadHeaders | None", self.scope.get(RESPONSE_HEADERS_KEY))
        if extra is not None:
            # Checked and serialised when built; the names the response set itself left out.
            extra = extra.without(extra.names.intersection(names))
        if self.flow.write_paused or self.access_log:
            if extra is not None:
                headers += extra.headers
            await super().send({**message, "headers": headers[len(self.default_headers) :]})
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        status: int = message["status"]
        if BAD_NAME.search(b"".join(names)):
            raise RuntimeError("Invalid HTTP header name.")
        if BAD_VALUE.search(b"".join([value for _, value in headers])):
            raise RuntimeError("Invalid HTTP header value.")
        closing = False
        if not FRAMING_HEADERS.isdisjoint(names):
            closing = self._special_headers(names, headers)
        head = [_STATUS_LINES.get(status) or status_line(status)]
        head += [b"%s: %s\r\n" % (name, value) for name, (_, value) in zip(names, headers, strict=True)]
        if extra is not None:
            head.append(extra.data)
        if not self.keep_alive and not closing:
            head.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in _NO_BODY_STATUSES:
            self.chunked_encoding = True
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))

    def _special_headers(self, names: list[bytes], headers: list[Any]) -> bool:
        """Framing and connection headers, as uvicorn reads them; True if the app sent `Connection: close`."""
        closing = False
        for name, (_, value) in zip(names, headers, strict=True):
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                closing = True
        return closing


def refusal(status: int, error: str, message: str) -> bytes:
    """A whole `Connection: close` answer with the usual `{"error", "message"}` body, for the listener to write."""
    body = orjson.dumps({"error": error, "message": message})
    return status_line(status) + _REFUSAL_HEAD % len(body) + body


_REFUSAL_HEAD: Final = (
    b"content-type: application/json\r\ncontent-length: %d\r\ncache-control: no-store\r\n"
    b"x-content-type-options: nosniff\r\nconnection: close\r\n\r\n"
)


class _Refused(Exception):
    """Raised from a parser callback: the head is refused, parsing stops here."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer


class BarbicanHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering through `FastHeadCycle`, with the listener's limits.

    Each request's scope carries the HEAD_HEADERS_EXTENSION and, on TLS connections, the ASGI
    `tls` extension (client certificate). `server.limits` are enforced here, before any routing:

    - The head (request line and headers) is bounded while it arrives: bytes read while it is
      incomplete are added up per read (one addition), so a head that is still incomplete past
      `max_header_bytes` is refused without buffering the rest, and a head that completes inside
      a read is measured exactly only when that read could hold more than the limit. A pipelined
      head that begins inside the read ending the request before it is counted from the next
      read (so, incomplete, it can pass the limit by less than one read) and measured exactly
      when complete. `max_headers` is checked once the head is complete (the byte limit bounds
      it before). Both answer 431 (after the responses to earlier pipelined requests) and close.
    - `header_timeout` runs from the connection's start, or from the first byte after an idle
      keep-alive connection (as the next sweep sees it; idle time is uvicorn's
      `timeout_keep_alive`), to the end of the head.
    - `body_timeout`: no byte of an unfinished request body for that long while the listener is
      ready to take more (not paused by flow control, not waiting to send `100 Continue`).
    - `max_connections` per listening port: a connection over it gets 503 and is closed at once.

    Timeouts are checked by the `ListenerGuard` sweeper, which also reads the clock, so the request
    path only adds and compares integers. Build the class for a server with `listener_protocol(limits)`: uvicorn
    instantiates it itself. This base class enforces the defaults.
    """

    guard: ClassVar[ListenerGuard] = ListenerGuard(ListenerLimits())
    max_header_bytes: ClassVar[int] = ListenerLimits().max_header_bytes
    max_headers: ClassVar[int] = ListenerLimits().max_headers
    header_timeout: ClassVar[float] = ListenerLimits().header_timeout
    body_timeout: ClassVar[float] = ListenerLimits().body_timeout

    # Per connection (class-level defaults, so uvicorn's constructor stays as it is).
    tls_extension: dict[object, object] | None = None
    _port = 0
    #: Bytes of the current head are being counted (from the connection's start, and from the end
    #: of each request); closed when the head is complete.
    _head_open = True
    _head_bytes = 0
    #: The head began inside a read whose bytes were not counted (a pipelined request): measure it
    #: exactly when complete.
    _head_uncounted = False
    #: When the current head's clock started: at the connection's start, else at the first sweep that
    #: sees bytes of it (0: not running, an idle keep-alive connection).
    _head_since = 0.0
    #: Reads so far, and as the sweeper last saw them (body progress), and since when it saw none.
    _reads = 0
    _reads_seen = 0
    _body_since = 0.0
    #: `serve --workers`: a graceful stop serves the request a connection is sending, or has yet to send if it
    #: never sent one (the kernel may have handed it over just before the stop), instead of closing it unanswered.
    #: One process serving alone keeps uvicorn's way.
    drain_requests: ClassVar[bool] = False
    #: Set when the server begins a graceful stop; requests find it under STOPPING_EXTENSION.
    stopping: ClassVar[asyncio.Event] = asyncio.Event()
    _close_after_request = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.server is not None and self.server[1] is not None:
            self._port = self.server[1]
        if not self.guard.admit(self, self._port, self.loop):
            self._head_open = False
            limit = self.guard.limits.max_connections
            transport.write(
                refusal(503, "too_many_connections", f"over server.limits.max_connections ({limit}); try again later")
            )
            transport.close()
            return
        self._head_since = self.loop.time()
        if self.scheme == "https":
            # asyncio and uvloop call this after the handshake, so the peer certificate is known.
            self.tls_extension = tls_scope_extension(transport.get_extra_info("ssl_object"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self, self._port)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._reads += 1
        if self._head_open:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.answer)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            # Otherwise the request was answered as plain HTTP (the runner serves no WebSocket).
            return
        if self._head_open and self._head_bytes > self.max_header_bytes:
            self._refuse(_too_large(self.max_header_bytes))

    def shutdown(self) -> None:
        """A graceful stop (uvicorn calls it on each open connection)."""
        self.stopping.set()
        # No cycle yet: the first request has not arrived. A finished one and head bytes: the next is arriving.
        fresh = self.cycle is None or (self.cycle.response_complete and self._head_bytes > 0)
        if self.drain_requests and fresh:
            # Answered, then closed; one that never sends its head is closed by the sweeper (header_timeout).
            self._close_after_request = True
            return
        super().shutdown()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = {HEAD_HEADERS_EXTENSION: {}, STOPPING_EXTENSION: self.stopping}
        if self.tls_extension is not None:
            extensions["tls"] = dict(self.tls_extension)
        self.scope["extensions"] = extensions
        if not self._head_bytes:
            # Begun inside the read that ended the previous request (pipelined): that read was not counted.
            self._head_uncounted = True

    def on_headers_complete(self) -> None:
        if self._head_bytes > self.max_header_bytes or self._head_uncounted:
            # The reads counted may hold more than this head (a body, the next request): measure it.
            self._head_uncounted = False
            if len(self.url) + header_bytes(self.headers) > self.max_header_bytes:
                raise _Refused(_too_large(self.max_header_bytes))
        if len(self.headers) > self.max_headers:
            limit = self.max_headers
            raise _Refused(refusal(431, _TOO_LARGE, f"more headers than server.limits.max_headers ({limit})"))
        self._head_open = False
        super().on_headers_complete()
        cycle = self.cycle
        # The cycle's task has been created but not run yet, so it answers through our send.
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = FastHeadCycle
        if self._close_after_request and cycle is not None:
            cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What follows belongs to the next head, counted from the next read.
        self._head_open = True
        self._head_bytes = 0
        self._head_since = 0.0

    def check_deadlines(self, now: float) -> None:
        """Close the connection if its head or its body is overdue (called by the guard's sweeper)."""
        if self._head_open:
            if self._head_since:
                if now - self._head_since > self.header_timeout:
                    self._head_overdue()
            elif self._head_bytes or self._head_uncounted:
                # A new head on a keep-alive connection: its clock starts now (within one sweep of its first byte).
                self._head_since = now
            return
        cycle = self.cycle
        if (
            cycle is None
            or not cycle.more_body
            or self.flow.read_paused
            or cycle.waiting_for_100_continue
            or self.transport.is_closing()
        ):
            self._body_since = 0.0
        elif self._reads != self._reads_seen or not self._body_since:
            self._reads_seen = self._reads
            self._body_since = now
        elif now - self._body_since > self.body_timeout:
            self.transport.close()

    def _head_overdue(self) -> None:
        self._head_open = False
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or not (self._head_bytes or self._head_uncounted):
            # A response still being written is cut (the client stopped mid-request meanwhile); nothing
            # is answered to a connection that asked nothing.
            self.transport.close()
            return
        reason = f"the request head took longer than server.limits.header_timeout ({self.header_timeout:g}s)"
        self._answer_and_close(refusal(408, "request_timeout", reason))

    def _refuse(self, answer: bytes) -> None:
        """Refuse the head being read: nothing more is parsed; answered once earlier responses are done."""
        self._head_open = False
        self.guard.refused_head()
        self.parser = cast("httptools.HttpRequestParser", _DISCARD)
        last = self.cycle
        if last is None or (last.response_complete and not self.pipeline):
            self._answer_and_close(answer)
            return
        # Pipelined requests before this one are answered first, in order; the last one ends with ours.
        self.flow.pause_reading()
        then = last.on_response

        def answer_after_last_response() -> None:
            then()
            self._answer_and_close(answer)

        last.on_response = answer_after_last_response

    def _answer_and_close(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


class _Discard:
    """Stands in for the parser once a head is refused: what follows is never parsed."""

    def feed_data(self, data: bytes) -> None:
        del data


_DISCARD: Final = _Discard()
_TOO_LARGE: Final = "header_fields_too_large"


def _too_large(limit: int) -> bytes:
    return refusal(431, _TOO_LARGE, f"the request head is over server.limits.max_header_bytes ({limit} bytes)")


def listener_protocol(limits: ListenerLimits, counters: SecurityCounters | None = None) -> type[BarbicanHttpProtocol]:
    """The protocol class serving with these limits, counting refused heads in `counters` (uvicorn makes instances)."""

    class Configured(BarbicanHttpProtocol):
        guard = ListenerGuard(limits, counters)
        stopping = asyncio.Event()  # one per listener: set when the server begins to stop
        max_header_bytes = limits.max_header_bytes
        max_headers = limits.max_headers
        header_timeout = limits.header_timeout
        body_timeout = limits.body_timeout

    Configured.__name__ = Configured.__qualname__ = "BarbicanHttpProtocol"
    return Configured
