"""A link: one upstream MCP session serving one (isolated) or many (shared) client sessions.

The link rewrites every id that crosses it so that clients never collide upstream: request
ids and progress tokens become link-unique integers on the way up and are restored on the
way down; server-to-client requests get per-session ids; cancellations are translated
both ways. Each upstream message goes to exactly one place:

- a response, to the stream of the request it answers;
- progress, to the stream of the request that carried the token;
- anything the transport relates to a request (Streamable HTTP POST streams), to it;
- other requests and notifications, to the session whose request is oldest in flight
  (stdio and legacy SSE carry no relation), else the session's GET stream; a link whose
  requests come from several principals (the stateless one) delivers such messages nowhere;
- list_changed to every session, resources/updated to the sessions subscribed to it.

Apart from the stateless link (requests outside any session, for which nothing is guessed and
no client capability declared), a link serves one principal's sessions: shared mode keeps one link per principal
(server/pool.py), so all the routing above stays within one principal.

In shared mode the link keeps log levels and resource subscriptions per client (`shared.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamClosed, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.security.authorization import LISTINGS, Access, target
from mcp_barbican.server.session import Session
from mcp_barbican.server.shared import LOCAL_IN_SHARED, UpstreamSettings, deliver_log
from mcp_barbican.server.streams import EventStream
from mcp_barbican.server.toolgate import ToolGate
from mcp_barbican.upstream.base import CloseHandler, MessageHandler, UpstreamChannel

if TYPE_CHECKING:
    pass

__all__ = ["PROXY_CLIENT_CAPABILITIES", "ChannelFactory", "Link", "Pending"]

logger = logging.getLogger(__name__)

ChannelFactory = Callable[[MessageHandler, CloseHandler], UpstreamChannel]

#: What a shared upstream session declares: the proxy can route each of these to a client
#: that declared it, and answers an error for a client that did not.
PROXY_CLIENT_CAPABILITIES: Final[dict[str, Any]] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}
_CAPABILITY_OF_METHOD: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
#: How a hidden or denied name is refused, per kind: the same answer whether it exists or not.
_UNKNOWN: Final = {
    "tools": (jsonrpc.INVALID_PARAMS, "Unknown tool: {!r} is not available through this proxy"),
    "prompts": (jsonrpc.INVALID_PARAMS, "Unknown prompt: {!r} is not available through this proxy"),
    "resources": (-32002, "Resource not found: {!r} is not available through this proxy"),
}
#: Restart backoff for a link whose upstream died: first delay, factor, ceiling (seconds).
RESTART_BACKOFF: Final = (0.2, 2.0, 30.0)


class Pending:
    """A client request waiting for its upstream response."""

    __slots__ = (
        "access",
        "method",
        "original_id",
        "paged",
        "session",
        "stream",
        "timer",
        "token",
        "tool",
        "upstream_id",
    )

    def __init__(
        self,
        session: Session,
        original_id: RequestId,
        upstream_id: int,
        stream: EventStream,
        method: str,
        token: Any,
        access: Access | None = None,
    ) -> None:
        self.session = session
        self.original_id = original_id
        self.upstream_id = upstream_id
        self.stream = stream
        self.method = method
        self.token = token
        #: The caller's authorization, which filters the listing this request asked for.
        self.access = access
        self.timer: asyncio.TimerHandle | None = None
        #: The tool a `tools/call` names, when the guard reads its answer.
        self.tool: str | None = None
        #: A listing request for a later page (a page alone never tells that a tool was removed).
        self.paged = False


class Link:
    """One upstream channel and the id translation for the sessions it serves."""

    def __init__(
        self,
        name: str,
        factory: ChannelFactory,
        *,
        shared: bool,
        start_timeout: float,
        request_timeout: float,
        on_state: Callable[[Link, str, str | None], None] | None = None,
        tools: ToolGate | None = None,
        guess_unrelated: bool = True,
    ) -> None:
        self.name = name
        self.shared = shared
        #: Whether a shared link may send a message the transport relates to no request to the
        #: oldest request in flight; off where requests of different principals share the link.
        self._guess_unrelated = guess_unrelated
        self._factory = factory
        self._start_timeout = start_timeout
        self.request_timeout = request_timeout
        self._on_state = on_state
        #: The MCP's tool filter, pins and call guard (one for every link of the runtime).
        self.tools = tools if tools is not None else ToolGate()
        self.channel: UpstreamChannel | None = None
        self.sessions: dict[str, Session] = {}
        #: When the last session left (or the link opened): what shared mode reclaims first.
        self.idle_since = time.monotonic()
        self._pending: dict[int, Pending] = {}
        self._internal: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 0
        self.init_params: dict[str, Any] | None = None
        self.init_result: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._restarter: asyncio.Task[None] | None = None
        #: The log level and subscriptions the upstream session holds on its clients' behalf.
        self.settings = UpstreamSettings(self)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def connect(self) -> None:
        """Open the channel (spawn or connect), bounded by start_timeout."""
        channel = self._factory(self._on_message, self._on_close)
        try:
            await asyncio.wait_for(channel.start(), self._start_timeout)
        except TimeoutError as exc:
            await channel.aclose()
            raise UpstreamTimeout(f"no connection within {self._start_timeout:g}s") from exc
        except BaseException:
            await channel.aclose()
            raise
        self.channel = channel

    async def handshake(self, params: dict[str, Any]) -> dict[str, Any]:
        """Initialize the upstream session ourselves (shared links, probes and restarts)."""
        response = await self.call("initialize", params, timeout=self._start_timeout)
        if "error" in response:
            error = response["error"]
            raise UpstreamUnavailable(f"initialize failed: {error.get('message', error)}")
        result: dict[str, Any] = response["result"]
        self._initialized(params, result)
        await self.notify("notifications/initialized")
        self._ready.set()
        return result

    def _initialized(self, params: dict[str, Any], result: dict[str, Any]) -> None:
        self.init_params = params
        self.init_result = result
        if self.channel is not None:
            self.channel.protocol_version = result.get("protocolVersion")

    def resume(self, params: dict[str, Any], upstream_session: str | None) -> None:
        """Continue an upstream session another replica initialized with `params` (from a sealed session id)."""
        assert self.channel is not None
        # Far from the ids the replica that opened it uses on the same upstream session.
        self._next_id = secrets.randbelow(1 << 44) + (1 << 32)
        self.channel.resume(upstream_session)
        self._initialized(params, {"protocolVersion": params["protocolVersion"]})
        self._ready.set()

    async def aclose(self, *, keep_upstream: bool = False) -> None:
        """Close the channel and end every stream still waiting on it (`keep_upstream`: leave the upstream
        session open, for another replica continuing it)."""
        self._closing = True
        self._ready.clear()
        if self._restarter is not None:
            self._restarter.cancel()
        self._fail_all("the upstream session was closed")
        if self.channel is not None:
            self.channel.keep_session = keep_upstream
            await self.channel.aclose()

    def _on_close(self, error: BaseException | None) -> None:
        reason = str(error) if error else "closed"
        self._ready.clear()
        self._fail_all(f"upstream {self.name!r} went away: {reason}")
        if self._on_state:
            self._on_state(self, "failed", reason)
        restarting = self._restarter is not None and not self._restarter.done()
        if not self._closing and not restarting and self.init_params is not None and (self.shared or self.sessions):
            self._restarter = asyncio.create_task(self._restart(), name=f"restart-{self.name}")

    async def _restart(self) -> None:
        delay, factor, ceiling = RESTART_BACKOFF
        assert self.init_params is not None
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self.connect()
                await self.handshake(self.init_params)
                await self._restore()
            except (UpstreamError, OSError) as exc:
                logger.warning("upstream %r restart failed: %s; next try in %.1fs", self.name, exc, delay * factor)
                if self.channel is not None:
                    await self.channel.aclose()
                delay = min(delay * factor, ceiling)
                continue
            logger.info("upstream %r restarted", self.name)
            if self._on_state:
                self._on_state(self, "ready", None)
            return

    async def _restore(self) -> None:
        """Give a restarted upstream session the log level and subscriptions its clients set."""
        await self.settings.restore()

    def mark_ready(self) -> None:
        """For a link that serves requests without a handshake (stateless relay)."""
        self._ready.set()

    async def wait_ready(self) -> None:
        if self._ready.is_set():
            return
        try:
            await asyncio.wait_for(self._ready.wait(), self._start_timeout)
        except TimeoutError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} is not available") from exc

    # -- sessions ----------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        self.sessions[session.id] = session
        session.link = self

    def busy(self) -> bool:
        return bool(self.sessions)

    async def detach(self, session: Session) -> None:
        """Forget a session: cancel its requests upstream; shared links drop its subscriptions."""
        self.sessions.pop(session.id, None)
        if not self.sessions:
            self.idle_since = time.monotonic()
        for pending in list(session.inflight.values()):
            self._forget(pending)
            with contextlib.suppress(UpstreamError):
                await self.notify(
                    "notifications/cancelled", {"requestId": pending.upstream_id, "reason": "session ended"}
                )
        session.inflight.clear()
        if self.shared and self.ready:
            with contextlib.suppress(UpstreamError):
                await self.settings.trim()

    # -- client -> upstream ------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def forward_request(
        self,
        session: Session,
        msg: Message,
        stream: EventStream,
        access: Access | None = None,
        asked: Message | None = None,
    ) -> None:
        """Send a client request upstream; its answer will arrive on `stream`.

        `access`: the caller's authorization (None: no policy). A name it denies is refused
        exactly like a name the tool filter hides, whether or not the upstream has it, and the
        refusal names what the client asked for (`asked`, when the proxy renamed it: `/mcp`).
        """
        method = msg["method"]
        if access is not None and not access.permits(method, msg.get("params")):
            self.refuse_unknown(asked or msg, stream)
            return
        if self.shared and method in LOCAL_IN_SHARED:
            await LOCAL_IN_SHARED[method](self, session, msg, stream)
            return
        if method == "initialize":
            self.init_params = msg.get("params") or {}
        else:
            await self.wait_ready()
        if method == "tools/call":
            if not self.tools.visible(msg.get("params")):
                self.refuse_unknown(asked or msg, stream)
                return
            refusal = self.tools.refused_arguments(session, msg, asked)
            if refusal is not None:
                stream.refused = True
                stream.push(jsonrpc.error_body(msg["id"], jsonrpc.INVALID_PARAMS, refusal), final=True)
                return
        self._track_client_state(session, msg)
        upstream_id = self._new_id()
        params = msg.get("params")
        token = None
        if isinstance(params, dict):
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                token = meta["progressToken"]
                meta["progressToken"] = upstream_id
        pending = Pending(session, msg["id"], upstream_id, stream, method, token, access)
        if method == "tools/call" and self.tools.watches_results:
            pending.tool = str(params.get("name", "")) if isinstance(params, dict) else ""
        if method == "tools/list" and isinstance(params, dict) and params.get("cursor"):
            pending.paged = True
        self._pending[upstream_id] = pending
        session.inflight[msg["id"]] = pending
        timeout = self._start_timeout if method == "initialize" else self.request_timeout
        pending.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, pending)
        msg["id"] = upstream_id
        try:
            await self._send(msg)
        except UpstreamError as exc:
            self._finish(pending, jsonrpc.error_response(None, jsonrpc.UPSTREAM_ERROR, str(exc)))

    @staticmethod
    def refuse_unknown(msg: Message, stream: EventStream) -> None:
        """Answer a name the caller may not use as if it did not exist."""
        kind, name = target(msg["method"], msg.get("params")) or ("tools", "")
        code, text = _UNKNOWN[kind]
        stream.refused = True
        stream.push(jsonrpc.error_body(msg["id"], code, text.format(name)), final=True)

    def _track_client_state(self, session: Session, msg: Message) -> None:
        """Remember what an isolated link must restore after a restart."""
        params = msg.get("params") or {}
        method = msg["method"]
        if method == "logging/setLevel":
            session.log_level = params.get("level")
        elif method == "resources/subscribe" and "uri" in params:
            session.subscriptions.add(params["uri"])
        elif method == "resources/unsubscribe":
            session.subscriptions.discard(params.get("uri", ""))

    async def forward_notification(self, session: Session, msg: Message) -> None:
        method = msg["method"]
        if method == "notifications/cancelled":
            params = msg.get("params") or {}
            request_id = params.get("requestId")
            pending = session.inflight.get(request_id) if isinstance(request_id, (str, int)) else None
            if pending is None:
                return
            self._forget(pending)
            pending.stream.finish()
            params["requestId"] = pending.upstream_id
        elif method == "notifications/initialized":
            session.initialized = True
            if self.shared:
                return
        await self._send(msg)

    async def forward_response(self, session: Session, msg: Message) -> bool:
        """Relay a client's answer to a server-to-client request; False if nothing awaits it."""
        down_id = msg.get("id")
        if not isinstance(down_id, int) or down_id not in session.server_requests:
            return False
        msg["id"] = session.server_requests.pop(down_id)
        await self._send(msg)
        return True

    async def _send(self, msg: Message) -> None:
        channel = self.channel
        if channel is None or channel.closed:
            raise UpstreamClosed(f"upstream {self.name!r} is not connected")
        await channel.send(msg)

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float) -> Message:
        """A request of the proxy's own (not a client's); returns the raw response."""
        upstream_id = self._new_id()
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._internal[upstream_id] = future
        msg: Message = {"jsonrpc": "2.0", "id": upstream_id, "method": method}
        if params is not None:
            msg["params"] = params
        try:
            await self._send(msg)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{method} got no answer within {timeout:g}s") from exc
        finally:
            self._internal.pop(upstream_id, None)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: Message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        await self._send(msg)

    # -- upstream -> client ------------------------------------------------------------

    def _on_message(self, msg: Message, related: RequestId | None) -> None:
        if "method" not in msg:
            self._on_response(msg)
        elif "id" in msg:
            self._on_server_request(msg, related)
        else:
            self._on_notification(msg, related)

    def _on_response(self, msg: Message) -> None:
        upstream_id = msg.get("id")
        if not isinstance(upstream_id, int):
            logger.debug("upstream %r sent a response with an id we never used", self.name)
            return
        pending = self._pending.get(upstream_id)
        if pending is None:
            future = self._internal.get(upstream_id)
            if future is not None and not future.done():
                future.set_result(msg)
            return
        if pending.method == "tools/list":
            self.tools.listing(msg, paged=pending.paged)
        elif pending.tool is not None:
            self.tools.result(msg, pending.tool, pending.session)
        if pending.access is not None and pending.method in LISTINGS:
            pending.access.filter_listing(pending.method, msg.get("result"))
        if pending.method == "initialize" and "result" in msg:
            self._initialized(self.init_params or {}, msg["result"])
            pending.session.protocol_version = msg["result"].get("protocolVersion")
            self._ready.set()
        self._finish(pending, msg)

    def _finish(self, pending: Pending, msg: Message) -> None:
        self._forget(pending)
        msg["id"] = pending.original_id
        pending.stream.push(jsonrpc.dumps(msg), final=True, message=msg)

    def _forget(self, pending: Pending) -> None:
        self._pending.pop(pending.upstream_id, None)
        pending.session.inflight.pop(pending.original_id, None)
        if pending.timer is not None:
            pending.timer.cancel()

    def _timed_out(self, pending: Pending) -> None:
        if self._pending.get(pending.upstream_id) is not pending:
            return
        if pending.method == "initialize":  # a child that never starts serving: its session is closed on this answer
            waited = f"{self._start_timeout:g}s (start_timeout)"
            message = f"upstream {self.name!r} did not answer initialize within {waited}"
            logger.warning("%s", message)
        else:
            message = f"upstream {self.name!r} did not answer within {self.request_timeout:g}s"
        self._finish(pending, jsonrpc.error_response(None, jsonrpc.UPSTREAM_ERROR, message))
        if self.channel is not None and not self.channel.closed:
            cancel = {"requestId": pending.upstream_id, "reason": "timed out at the proxy"}
            asyncio.ensure_future(self._quietly(self.notify("notifications/cancelled", cancel)))

    @staticmethod
    async def _quietly(awaitable: Any) -> None:
        with contextlib.suppress(UpstreamError):
            await awaitable

    def _fail_all(self, reason: str) -> None:
        for pending in list(self._pending.values()):
            self._finish(pending, jsonrpc.error_response(None, jsonrpc.UPSTREAM_ERROR, reason))
        for future in self._internal.values():
            if not future.done():
                future.set_exception(UpstreamClosed(reason))
        for session in self.sessions.values():
            session.server_requests.clear()

    def _target(self, related: RequestId | None) -> tuple[Session | None, EventStream | None]:
        """The session and stream an unrouted upstream message belongs to."""
        if related is not None and isinstance(related, int):
            pending = self._pending.get(related)
            if pending is not None:
                return pending.session, pending.stream
        if not self.shared:
            session = next(iter(self.sessions.values()), None)
            return session, session.fallback_stream() if session else None
        if self._pending and self._guess_unrelated:
            oldest = next(iter(self._pending.values()))
            return oldest.session, oldest.stream
        return None, None

    def _on_server_request(self, msg: Message, related: RequestId | None) -> None:
        session, stream = self._target(related)
        capability = _CAPABILITY_OF_METHOD.get(msg["method"])
        if session is None or stream is None:
            if msg["method"] == "ping":
                self._reply({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
            else:
                self._reply_error(msg["id"], jsonrpc.INTERNAL_ERROR, "no client session is waiting on this upstream")
            return
        if capability is not None and not session.declared(capability):
            self._reply_error(msg["id"], jsonrpc.METHOD_NOT_FOUND, f"the client did not declare {capability}")
            return
        down_id = session.next_server_request_id()
        session.server_requests[down_id] = msg["id"]
        msg["id"] = down_id
        stream.push(jsonrpc.dumps(msg))

    def _reply_error(self, upstream_id: RequestId, code: int, message: str) -> None:
        self._reply(jsonrpc.error_response(upstream_id, code, message))

    def _reply(self, msg: Message) -> None:
        """Answer the upstream without waiting (from its message callback, which cannot await)."""
        asyncio.ensure_future(self._quietly(self._send(msg)))

    def _on_notification(self, msg: Message, related: RequestId | None) -> None:
        method: str = msg["method"]
        params = msg.get("params")
        if not isinstance(params, dict):
            params = {}
        if method == "notifications/progress":
            pending = self._pending.get(params.get("progressToken"))  # type: ignore[arg-type]
            if pending is not None:
                params["progressToken"] = pending.token
                pending.stream.push(jsonrpc.dumps(msg))
            return
        if method.endswith("/list_changed"):
            if method == "notifications/tools/list_changed" and self.tools.on_changed is not None:
                self.tools.on_changed()
            data = jsonrpc.dumps(msg)
            for session in self.sessions.values():
                session.get_stream.push(data)
            return
        if method == "notifications/resources/updated":
            data = jsonrpc.dumps(msg)
            for session in self._sessions_subscribed(params.get("uri")):
                session.get_stream.push(data)
            return
        if method == "notifications/cancelled":
            self._on_server_cancel(msg, params)
            return
        if method == "notifications/message" and self.shared:
            deliver_log(msg, params.get("level", "info"), self._target(related), self.sessions.values())
            return
        _session, stream = self._target(related)
        if stream is not None:
            stream.push(jsonrpc.dumps(msg))

    def _on_server_cancel(self, msg: Message, params: dict[str, Any]) -> None:
        upstream_id = params.get("requestId")
        for session in self.sessions.values():
            for down_id, value in session.server_requests.items():
                if value == upstream_id:
                    del session.server_requests[down_id]
                    params["requestId"] = down_id
                    session.fallback_stream().push(jsonrpc.dumps(msg))
                    return

    def _sessions_subscribed(self, uri: Any) -> Iterator[Session]:
        if not self.shared:
            yield from self.sessions.values()
            return
        for session in self.sessions.values():
            if uri in session.subscriptions:
                yield session
