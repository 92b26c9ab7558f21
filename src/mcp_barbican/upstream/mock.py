"""An in-process upstream for tests, in the manner of httpx's `MockTransport`.

`MockUpstream(handler)` is a channel factory: give it where a `ChannelFactory` is expected
(`Link`, `McpRuntime`) and every channel it opens answers each message the proxy sends with
`handler(message)`, a list of messages (empty for none: a request left unanswered). Replies
reach the proxy after `send()` returns, as from a real transport. A test can also make the
upstream speak first (`MockChannel.emit`) or die (`MockChannel.fail`), and read everything the
proxy sent (`MockChannel.sent`, copies taken before the proxy could change them).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

from mcp_barbican.exceptions import UpstreamClosed
from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.upstream.base import CloseHandler, MessageHandler, UpstreamChannel

__all__ = ["Handler", "MockChannel", "MockUpstream"]

Handler = Callable[[Message], list[Message]]


class MockChannel(UpstreamChannel):
    """One upstream session whose server is a function."""

    def __init__(self, on_message: MessageHandler, on_close: CloseHandler, handler: Handler, *, relate: bool) -> None:
        super().__init__(on_message, on_close)
        self._handler = handler
        self._relate = relate
        self._closed = False
        self.started = False
        self.sent: list[Message] = []

    async def start(self) -> None:
        self.started = True

    async def send(self, message: Message) -> None:
        if self._closed:
            raise UpstreamClosed("the mock upstream is closed")
        sent = copy.deepcopy(message)
        self.sent.append(sent)
        related = sent.get("id") if self._relate and "method" in sent else None
        for reply in self._handler(copy.deepcopy(sent)):
            asyncio.get_running_loop().call_soon(self._deliver, reply, related)

    def emit(self, message: Message, related: RequestId | None = None) -> None:
        """A message the upstream sends of its own accord, delivered now."""
        self._deliver(message, related)

    def fail(self, error: BaseException | None = None) -> None:
        """The upstream goes away (as a crashed child or a dropped connection)."""
        if not self._closed:
            self._closed = True
            self.on_close(error)

    def _deliver(self, message: Message, related: RequestId | None) -> None:
        if not self._closed:
            self.on_message(message, related)

    async def aclose(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class MockUpstream:
    """A channel factory whose channels all answer with `handler`; `channels` lists them, oldest first.

    `relate=True` relates each reply to the request that caused it, as Streamable HTTP POST
    streams do; the default relates nothing, as stdio does.
    """

    def __init__(self, handler: Handler, *, relate: bool = False) -> None:
        self.handler = handler
        self.relate = relate
        self.channels: list[MockChannel] = []

    def __call__(self, on_message: MessageHandler, on_close: CloseHandler) -> MockChannel:
        channel = MockChannel(on_message, on_close, self.handler, relate=self.relate)
        self.channels.append(channel)
        return channel

    @property
    def channel(self) -> MockChannel:
        """The newest channel."""
        return self.channels[-1]
