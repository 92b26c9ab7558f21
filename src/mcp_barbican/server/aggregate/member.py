"""One MCP inside one aggregated session: its upstream session, opened on first use.

The member's upstream session is an ordinary session of that MCP's runtime (its quota, its
`session_mode`, its restarts), whose answer streams are taps: the aggregated session reads each
message as the link delivers it, gives the names and URIs in it their MCP, renumbers the
upstream's requests to the client, and passes it on to the client's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_barbican.exceptions import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.security.authorization import ACCESS_KEY
from mcp_barbican.security.principal import principal_id
from mcp_barbican.server.aggregate.rewrite import rewrite_notification, rewrite_result
from mcp_barbican.server.quota import TooManySessions
from mcp_barbican.server.runtime import CapacityError
from mcp_barbican.server.session import Session
from mcp_barbican.server.streams import EventStream

if TYPE_CHECKING:
    from mcp_barbican.server.aggregate.fan import Fan
    from mcp_barbican.server.control import McpRoute
    from mcp_barbican.types import Scope

__all__ = ["Member", "Tap"]

logger = logging.getLogger(__name__)

#: Called with each message a tap receives and whether it ends the stream (None: ended unanswered).
Deliver = Callable[[Message | None, bytes | None, bool], None]


class Tap(EventStream):
    """An answer stream that hands each message on as it arrives instead of keeping it."""

    def __init__(self, deliver: Deliver, *, persistent: bool = False, listening: Callable[[], bool] | None = None):
        # No event log: a tap keeps nothing (it is made per request, so only what the link reads is set).
        self.stream_id = "tap"
        self.persistent = persistent
        self.done = self.failed = False
        self.final_data = self.final_message = None
        self.delivered = 1
        self._waiters = []
        self._deliver = deliver
        self._listening = listening

    @property
    def attached(self) -> bool:
        """Busy while the aggregated session's client listens (so the member's session is not reclaimed)."""
        return self._listening is not None and self._listening()

    @attached.setter
    def attached(self, _value: bool) -> None:
        pass

    def push(self, data: bytes, *, final: bool = False, message: dict[str, Any] | None = None) -> None:
        if self.done:
            return
        if final and not self.persistent:
            self.done = True
        self._deliver(message if message is not None else jsonrpc.loads(data), data, final)

    def finish(self) -> None:
        if not self.persistent and not self.done:
            self.done = True
            self._deliver(None, None, True)

    def close(self) -> None:
        self.done = True

    def read_from(self, seq: int) -> tuple[list[bytes], int]:
        return [], seq


class Answer(Tap):
    """The tap of a request routed to one member: the answer goes on to the client's stream.

    A subclass rather than a closure: it is made for every routed request.
    """

    def __init__(self, member: Member, stream: EventStream, msg: Message) -> None:
        super().__init__(_nowhere)
        self.member = member
        self.stream = stream
        self.method = msg["method"]
        self.request_id = msg["id"]  # the link renumbers `msg` on its way up

    def push(self, data: bytes, *, final: bool = False, message: dict[str, Any] | None = None) -> None:
        if self.done:
            return
        answer = message if message is not None else jsonrpc.loads(data)
        stream = self.stream
        if not final:
            self.member.downstream(answer, stream)
            return
        self.done = True
        self.member.fan.session.inflight.pop(self.request_id, None)
        if "result" in answer and rewrite_result(self.member.id, self.method, answer["result"]):
            data = jsonrpc.dumps(answer)
        stream.push(data, final=True, message=answer)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.member.fan.session.inflight.pop(self.request_id, None)
            self.stream.finish()


def _nowhere(_msg: Message | None, _data: bytes | None, _final: bool) -> None:
    pass


class Member:
    """One MCP of an aggregated session."""

    def __init__(self, fan: Fan, route: McpRoute) -> None:
        self.fan = fan
        self.route = route
        self.id = route.mcp.id
        self.runtime = route.runtime
        self.inner: Session | None = None
        self.capabilities: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    # -- the upstream session ----------------------------------------------------------

    def declares(self, capability: str) -> bool:
        """Whether the MCP declared `capability` (when nothing is known yet: maybe, so ask it)."""
        known = self.capabilities if self.inner is not None else self.runtime.capabilities
        return known is None or capability in known

    def unusable(self) -> str | None:
        """Why the member cannot serve a request now (None: it can, or may once opened)."""
        inner = self.inner
        if inner is not None and not inner.closed:
            link = inner.link
            return None if link is not None and link.ready else "its upstream session is restarting"
        if self.runtime.status == "failed":
            return f"the upstream is down: {self.runtime.last_error}"
        return None

    async def session(self, scope: Scope) -> Session:
        """The member's upstream session, opened now for the caller of `scope` if it has none."""
        inner = self.inner
        if inner is not None and not inner.closed:
            inner.touch()
            return inner
        async with self._lock:
            inner = self.inner
            if inner is None or inner.closed:
                inner = self.inner = await self._open(scope)
            inner.touch()
            return inner

    async def _open(self, scope: Scope) -> Session:
        runtime = self.runtime
        try:
            inner = runtime.new_session(
                principal_id(scope), client_ip=scope.get(CLIENT_IP_KEY), who=scope.get(PRINCIPAL_KEY)
            )
        except (TooManySessions, CapacityError) as exc:
            raise UpstreamUnavailable(str(exc)) from exc
        unrelated = Tap(self._unrelated, persistent=True, listening=self.fan.listening)
        del inner.streams[inner.get_stream.stream_id]
        inner.get_stream = inner.streams[unrelated.stream_id] = unrelated
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        tap = Tap(lambda msg, _data, _final: _settle(answer, msg))
        request: Message = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": self.fan.init_params}
        try:
            await runtime.initialize(inner, request, tap)
            response = await asyncio.wait_for(answer, runtime.start_timeout)
            if "error" in response or not inner.established:
                error = response.get("error") or {}
                raise UpstreamUnavailable(f"initialize failed: {error.get('message', error)}")
            capabilities = (response.get("result") or {}).get("capabilities")
            self.capabilities = capabilities if isinstance(capabilities, dict) else {}
            assert inner.link is not None
            await inner.link.forward_notification(inner, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            if self.fan.log_level is not None and "logging" in self.capabilities:
                level: Message = {"jsonrpc": "2.0", "id": 0, "method": "logging/setLevel"}
                level["params"] = {"level": self.fan.log_level}
                await inner.link.forward_request(inner, level, Tap(lambda _m, _d, _f: None))
        except TimeoutError as exc:
            await runtime.close_session(inner)
            raise UpstreamTimeout(f"no answer to initialize within {runtime.start_timeout:g}s") from exc
        except BaseException:
            await runtime.close_session(inner)
            raise
        return inner

    async def aclose(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            with contextlib.suppress(UpstreamError):
                await self.runtime.close_session(inner)

    # -- requests ----------------------------------------------------------------------

    async def relay(self, scope: Scope, msg: Message, stream: EventStream, asked: Message) -> None:
        """Send a client's request `asked` (`msg`: params as the MCP knows them); its answer goes to `stream`."""
        inner = self.inner
        if inner is None or inner.closed:
            inner = await self.session(scope)
        else:
            inner.touch()
        assert inner.link is not None
        await inner.link.forward_request(inner, msg, Answer(self, stream, msg), scope.get(ACCESS_KEY), asked)

    async def ask(self, scope: Scope, msg: Message, stream: EventStream) -> Message:
        """The MCP's whole answer to a request (a merged listing's part); what else it sends goes to `stream`."""
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def deliver(message: Message | None, _data: bytes | None, final: bool) -> None:
            if not final:
                self.downstream(message, stream)
            elif message is None:
                _fail(answer, UpstreamUnavailable("the request was cancelled"))
            else:
                _settle(answer, message)

        await self._forward(scope, msg, Tap(deliver))
        return await answer

    async def _forward(self, scope: Scope, msg: Message, tap: Tap) -> None:
        inner = await self.session(scope)
        assert inner.link is not None
        await inner.link.forward_request(inner, msg, tap, scope.get(ACCESS_KEY))

    async def notify(self, msg: Message) -> None:
        inner = self.inner
        if inner is not None and not inner.closed and inner.link is not None:
            await inner.link.forward_notification(inner, msg)

    async def respond(self, msg: Message) -> None:
        inner = self.inner
        if inner is not None and not inner.closed and inner.link is not None:
            await inner.link.forward_response(inner, msg)

    def cancel(self, request_id: Any) -> bool:
        """Whether the member has the client's request `request_id` in flight."""
        inner = self.inner
        return inner is not None and request_id in inner.inflight

    # -- upstream -> client ------------------------------------------------------------

    def _unrelated(self, msg: Message | None, _data: bytes | None, _final: bool) -> None:
        self.downstream(msg, self.fan.session.fallback_stream())

    def downstream(self, msg: Message | None, stream: EventStream) -> None:
        """A message from the upstream that answers nothing: give it its MCP and pass it to the client."""
        if msg is None:
            return
        method = msg.get("method")
        if not isinstance(method, str):
            return
        if "id" in msg:
            msg["id"] = self.fan.adopt(self, msg["id"])
        elif method.endswith("/list_changed"):
            self.fan.list_changed(msg)
            return
        elif method == "notifications/cancelled":
            params = msg.get("params") or {}
            down = self.fan.release(self, params.get("requestId"))
            if down is None:
                return
            params["requestId"] = down
        else:
            rewrite_notification(self.id, method, msg.get("params"))
        stream.push(jsonrpc.dumps(msg))


def _settle(future: asyncio.Future[Message], msg: Message | None) -> None:
    if msg is not None and not future.done():
        future.set_result(msg)


def _fail(future: asyncio.Future[Message], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
