"""The upstream channel contract: one MCP session with one upstream server.

A channel is a duplex pipe of JSON-RPC messages. The proxy core sends with `send()` and is
called back with `on_message(message, related_id)` for every message the upstream emits, in
the order it emits them. `related_id` is the id (as the proxy sent it upstream) of the
request whose response stream carried the message, when the transport says so (Streamable
HTTP POST streams); otherwise None (stdio, legacy SSE, the Streamable HTTP GET stream).
The handler owns each message it is given and may change it (the core rewrites ids in
place), so a channel must not look at a message after handing it on.
When the channel ends for any reason other than `aclose()`, it calls `on_close(error)` once.

Channels know nothing of downstream sessions, ids or policy: the core does all rewriting.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.tracecontext import OUTGOING

__all__ = ["CloseHandler", "IdentityHeaders", "MessageHandler", "UpstreamChannel", "add_trace", "with_identity"]

MessageHandler = Callable[[Message, RequestId | None], None]
CloseHandler = Callable[[BaseException | None], None]
#: The caller's identity headers for the next upstream request (`upstream_auth`); read on every request,
#: so a token exchanged anew reaches a session that is already open.
IdentityHeaders = Callable[[], Mapping[str, str]]


def with_identity(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], identity: IdentityHeaders | None
) -> CIMultiDictProxy[str] | CIMultiDict[str]:
    """`headers` with the identity headers and the trace context set over them (the same object when neither is)."""
    extra = identity() if identity is not None else None
    trace = OUTGOING.get()
    if not extra and trace is None:
        return headers
    merged = CIMultiDict(headers)
    for name, value in (extra or {}).items():
        merged[name] = value
    if trace is not None:
        add_trace(merged, trace)
    return merged


def add_trace(headers: CIMultiDict[str], trace: tuple[str, str | None] | None) -> None:
    """Set `traceparent` (and `tracestate`) of the span being relayed (tracecontext.OUTGOING; None: nothing)."""
    if trace is None:
        return
    headers["traceparent"] = trace[0]
    if trace[1]:
        headers["tracestate"] = trace[1]
    else:
        headers.popall("tracestate", None)


class UpstreamChannel(abc.ABC):
    """One upstream MCP session."""

    #: The MCP protocol version negotiated by `initialize`; HTTP channels send it as the
    #: `MCP-Protocol-Version` header on every request after initialization.
    protocol_version: str | None = None
    #: Set before `aclose` to leave the upstream session open for another replica that continues it.
    keep_session: bool = False

    def __init__(self, on_message: MessageHandler, on_close: CloseHandler) -> None:
        self.on_message = on_message
        self.on_close = on_close

    @property
    def session_id(self) -> str | None:
        """The upstream's own session id, for transports that have one."""
        return None

    def resume(self, session_id: str | None) -> None:
        """Continue an upstream session another process initialized (only channels with session ids can)."""
        raise NotImplementedError(f"{type(self).__name__} cannot continue another process's session")

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (or spawn). Raises UpstreamUnavailable or UpstreamTimeout."""

    @abc.abstractmethod
    async def send(self, message: Message) -> None:
        """Deliver one message upstream. Raises UpstreamClosed when the channel is gone.

        Returns once the upstream has accepted the message; responses and any related
        messages arrive later through `on_message`. Must not wait for a response.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Shut down, bounded in time; never calls `on_close`. Safe to call twice."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once the channel can carry no more messages."""
