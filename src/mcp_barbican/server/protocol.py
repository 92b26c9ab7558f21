"""uvicorn's httptools protocol with a cheaper response head.

uvicorn checks and serialises response headers one at a time, two regular-expression
searches and a few comparisons each: about 0.7 µs per header on the bench machine, so the
eight security headers alone cost more than every security decision together. This
protocol writes the status line and headers itself: the same checks (every name a token,
no control character in a value) run once over all names and once over all values, and
`Content-Length`, `Transfer-Encoding` and `Connection` get uvicorn's meaning. Everything
else (the body, flow control, keep-alive, pipelining, disconnects) stays uvicorn's.
Tests compare the bytes written with uvicorn's own for a table of responses.
"""

from __future__ import annotations

import http
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = [
    "HEAD_HEADERS_EXTENSION",
    "RESPONSE_HEADERS_KEY",
    "BarbicanHttpProtocol",
    "FastHeadCycle",
    "HeadHeaders",
    "status_line",
]

#: The ASGI extension this server advertises in `scope["extensions"]`: it adds the HeadHeaders
#: an app puts under RESPONSE_HEADERS_KEY in the scope to the response head (those the response
#: does not set itself), so a layer can add headers without wrapping every `send`.
HEAD_HEADERS_EXTENSION: Final = "mcp_barbican.head_headers"
RESPONSE_HEADERS_KEY: Final = "mcp_barbican.response_headers"

# RFC 9110 section 5.6.2: a field name is a token; a value holds no control character but HTAB.
_BAD_NAME: Final = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE: Final = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_SPECIAL: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_NO_BODY_STATUSES: Final = frozenset((204, 304))
#: Kept variants of one HeadHeaders without the names responses set themselves.
_VARIANTS_MAX: Final = 64


class HeadHeaders:
    """Response headers checked and serialised once; `data` is what joins a head that lacks them all."""

    __slots__ = ("_without", "data", "headers", "names")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.headers = [(name.lower(), value) for name, value in headers]
        self.names = frozenset(name for name, _ in self.headers)
        if _BAD_NAME.search(b"".join(self.names)) or _BAD_VALUE.search(b"".join(v for _, v in self.headers)):
            raise ValueError("a response header name is no token, or a value holds a control character")
        if not _SPECIAL.isdisjoint(self.names):
            raise ValueError("framing and connection headers are the response's own")
        self.data = b"".join(b"%s: %s\r\n" % header for header in self.headers)
        #: The set without the names a response set itself, per such group of names (few recur).
        self._without: dict[frozenset[bytes], HeadHeaders] = {}

    def __bool__(self) -> bool:
        return bool(self.headers)

    def without(self, present: frozenset[bytes]) -> HeadHeaders:
        """These headers less those named in `present` (the response's own win)."""
        if not present:
            return self
        rest = self._without.get(present)
        if rest is None:
            rest = HeadHeaders(header for header in self.headers if header[0] not in present)
            if len(self._without) < _VARIANTS_MAX:
                self._without[present] = rest
        return rest


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
        if _BAD_NAME.search(b"".join(names)):
            raise RuntimeError("Invalid HTTP header name.")
        if _BAD_VALUE.search(b"".join([value for _, value in headers])):
            raise RuntimeError("Invalid HTTP header value.")
        closing = False
        if not _SPECIAL.isdisjoint(names):
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


class BarbicanHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering through `FastHeadCycle`."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {HEAD_HEADERS_EXTENSION: {}}

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # The cycle's task has been created but not run yet, so it answers through our send.
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = FastHeadCycle
