"""What a link does for its clients when they share one upstream session (`session_mode: shared`).

The upstream session holds one log level and one set of resource subscriptions, but each
client asks for its own. The proxy keeps them per client: the upstream runs at the most
verbose level any client asked for and is subscribed to the union of the clients'
subscriptions, each client receives only the log lines and updates it asked for, and
`initialize`, `logging/setLevel` and `resources/(un)subscribe` are answered here. After a
restart any link (isolated too) gives its new upstream session back what its clients set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamError
from mcp_barbican.jsonrpc import Message, RequestId

if TYPE_CHECKING:
    from mcp_barbican.server.link import Link
    from mcp_barbican.server.session import Session
    from mcp_barbican.server.streams import EventStream

__all__ = ["LOCAL_IN_SHARED", "LOG_LEVELS", "UpstreamSettings", "admits", "deliver_log"]

LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_LEVEL_RANK: Final = {name: rank for rank, name in enumerate(LOG_LEVELS)}


def admits(threshold: str | None, level: Any) -> bool:
    """Whether a client that asked for `threshold` (None: nothing asked) gets a line at `level`."""
    if threshold is None:
        return True
    return _LEVEL_RANK.get(str(level), 0) >= _LEVEL_RANK.get(threshold, 0)


def deliver_log(
    msg: Message,
    level: Any,
    target: tuple[Session | None, EventStream | None],
    sessions: Iterable[Session],
) -> None:
    """A shared upstream's log line: to the request it belongs to, else to every client that asked for it."""
    session, stream = target
    if session is not None and stream is not None:
        if admits(session.log_level, level):
            stream.push(jsonrpc.dumps(msg))
        return
    data = jsonrpc.dumps(msg)
    for client in sessions:
        if client.log_level is not None and admits(client.log_level, level):
            client.get_stream.push(data)


class UpstreamSettings:
    """The log level and subscriptions one upstream session holds on its clients' behalf."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.level: str | None = None
        self.subscriptions: set[str] = set()

    def wanted(self) -> set[str]:
        wanted: set[str] = set()
        for session in self.link.sessions.values():
            wanted |= session.subscriptions
        return wanted

    async def sync_level(self) -> None:
        levels = [s.log_level for s in self.link.sessions.values() if s.log_level in _LEVEL_RANK]
        if not levels:
            return
        wanted = min(levels, key=lambda name: _LEVEL_RANK[name or "info"])
        if wanted != self.level:
            await self.link.call("logging/setLevel", {"level": wanted}, timeout=self.link.request_timeout)
            self.level = wanted

    async def subscribe(self, uri: str) -> Message:
        response = await self.link.call("resources/subscribe", {"uri": uri}, timeout=self.link.request_timeout)
        if "result" in response:
            self.subscriptions.add(uri)
        return response

    async def unsubscribe(self, uri: str) -> Message:
        self.subscriptions.discard(uri)
        return await self.link.call("resources/unsubscribe", {"uri": uri}, timeout=self.link.request_timeout)

    async def restore(self) -> None:
        """A new upstream session (after a restart): set everything again."""
        self.level = None
        self.subscriptions = set()
        await self.sync_level()
        for uri in self.wanted():
            await self.subscribe(uri)

    async def trim(self) -> None:
        """A client left: drop what no remaining client wants."""
        await self.sync_level()
        for uri in self.subscriptions - self.wanted():
            await self.unsubscribe(uri)


def _answer(stream: EventStream, request_id: RequestId, result: dict[str, Any]) -> None:
    answer = {"jsonrpc": "2.0", "id": request_id, "result": result}
    stream.push(jsonrpc.dumps(answer), final=True, message=answer)


def _relay_result(stream: EventStream, request_id: RequestId, response: Message) -> None:
    response = dict(response)
    response["id"] = request_id
    stream.push(jsonrpc.dumps(response), final=True, message=response)


def _upstream_failed(stream: EventStream, request_id: RequestId, exc: UpstreamError) -> None:
    stream.push(jsonrpc.error_body(request_id, jsonrpc.UPSTREAM_ERROR, str(exc)), final=True)


async def _initialize(link: Link, session: Session, msg: Message, stream: EventStream) -> None:
    await link.wait_ready()
    assert link.init_result is not None
    session.protocol_version = link.init_result.get("protocolVersion")
    _answer(stream, msg["id"], link.init_result)


async def _set_level(link: Link, session: Session, msg: Message, stream: EventStream) -> None:
    level = (msg.get("params") or {}).get("level")
    if level not in _LEVEL_RANK:
        stream.push(jsonrpc.error_body(msg["id"], jsonrpc.INVALID_PARAMS, f"unknown log level {level!r}"), final=True)
        return
    session.log_level = level
    await link.wait_ready()
    try:
        await link.settings.sync_level()
    except UpstreamError as exc:
        _upstream_failed(stream, msg["id"], exc)
        return
    _answer(stream, msg["id"], {})


async def _subscribe(link: Link, session: Session, msg: Message, stream: EventStream) -> None:
    uri = (msg.get("params") or {}).get("uri")
    if not isinstance(uri, str):
        stream.push(jsonrpc.error_body(msg["id"], jsonrpc.INVALID_PARAMS, "params.uri must be a string"), final=True)
        return
    await link.wait_ready()
    if uri in link.settings.subscriptions:
        session.subscriptions.add(uri)
        _answer(stream, msg["id"], {})
        return
    try:
        response = await link.settings.subscribe(uri)
    except UpstreamError as exc:
        _upstream_failed(stream, msg["id"], exc)
        return
    if "result" in response:
        session.subscriptions.add(uri)
    _relay_result(stream, msg["id"], response)


async def _unsubscribe(link: Link, session: Session, msg: Message, stream: EventStream) -> None:
    uri = (msg.get("params") or {}).get("uri")
    session.subscriptions.discard(uri)
    settings = link.settings
    if isinstance(uri, str) and uri in settings.subscriptions and uri not in settings.wanted():
        await link.wait_ready()
        try:
            await settings.unsubscribe(uri)
        except UpstreamError as exc:
            _upstream_failed(stream, msg["id"], exc)
            return
    _answer(stream, msg["id"], {})


LocalHandler = Callable[["Link", "Session", Message, "EventStream"], Awaitable[None]]

#: Client requests a shared link answers itself.
LOCAL_IN_SHARED: Final[dict[str, LocalHandler]] = {
    "initialize": _initialize,
    "logging/setLevel": _set_level,
    "resources/subscribe": _subscribe,
    "resources/unsubscribe": _unsubscribe,
}
