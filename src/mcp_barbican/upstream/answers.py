"""The body of one POST answer (SSE or JSON), relayed as it arrives, without a task of its own.

`Answer` takes the body callbacks of an `Exchange` (upstream/posting.py): SSE events are parsed
and handed on chunk by chunk, a JSON body is collected (bounded) and handed on at its end.
Once the response to the POSTed request went by, the server gets `grace` seconds to end the
stream before the connection is dropped. When the body ends, `on_done(answer)` is called once;
`answered`, `failure` and `parser` say how it went.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mcp_barbican.jsonrpc import RequestId
from mcp_barbican.upstream.http import SseParser
from mcp_barbican.upstream.posting import Exchange

__all__ = ["Answer"]

#: Hands on one message body; True when it held the response to the POSTed request.
Deliver = Callable[[bytes, RequestId | None], bool]


class Answer:
    """Relays one POST answer's body."""

    __slots__ = (
        "_exchange",
        "_deliver",
        "_grace",
        "_max",
        "_on_done",
        "_parts",
        "_size",
        "_timer",
        "answered",
        "done",
        "failure",
        "parser",
        "request_id",
    )

    def __init__(
        self,
        exchange: Exchange,
        request_id: RequestId | None,
        *,
        deliver: Deliver,
        on_done: Callable[[Answer], None],
        max_bytes: int,
        grace: float,
    ) -> None:
        self._exchange = exchange
        self._deliver = deliver
        self._on_done = on_done
        self._max = max_bytes
        self._grace = grace
        self._parts: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.request_id = request_id
        self.answered = False
        self.done = False
        self.failure = ""
        self.parser: SseParser | None = None

    def start(self) -> None:
        content_type = self._exchange.content_type
        if content_type == "text/event-stream":
            self.parser = SseParser(self._max)
        elif content_type == "application/json":
            length = self._exchange.content_length
            if length is not None and length > self._max:
                self._fail(f"SseError: response body of {length} bytes exceeds the {self._max} byte limit")
                return
        else:
            self.failure = f"upstream answered HTTP {self._exchange.status} with content type {content_type!r}"
            self._exchange.release()
            self._finish()
            return
        self._exchange.attach(self._data, self._end)

    def cancel(self) -> None:
        """Drop the answer (the channel closed): no callback."""
        self.done = True
        self._stop_timer()
        self._exchange.release()

    def _data(self, chunk: bytes) -> None:
        if self.done:
            return
        parser = self.parser
        if parser is None:
            self._size += len(chunk)
            if self._size > self._max:
                self._fail(f"SseError: response body exceeds the {self._max} byte limit")
                return
            self._parts.append(chunk)
            return
        try:
            events = parser.feed(chunk)
        except ValueError as exc:  # SseError
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        for event in events:
            if event.event == "message" and self._deliver(event.data, self.request_id) and not self.answered:
                self.answered = True
                self._timer = asyncio.get_running_loop().call_later(self._grace, self._grace_over)
            if self.done:
                return

    def _end(self, error: str | None) -> None:
        if self.done:
            return
        if error is not None:
            self.failure = f"the upstream response stream failed: {error}"
        elif self.parser is not None:
            self.failure = "the upstream ended the response stream without answering"
        else:
            self.answered = self._deliver(b"".join(self._parts), self.request_id)
            self._parts = []
            self.failure = "the upstream's JSON body held no response to the request"
        self._finish()

    def _fail(self, reason: str) -> None:
        self.failure = f"the upstream response stream failed: {reason}"
        self._exchange.release()
        self._finish()

    def _grace_over(self) -> None:
        self._timer = None
        if not self.done:
            self._exchange.release()  # the server kept the stream open after its response
            self._finish()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._stop_timer()
        self._on_done(self)
