"""The downstream MCP endpoints of one MCP: Streamable HTTP and legacy HTTP+SSE.

`/mcp/{id}` speaks Streamable HTTP (spec 2025-03-26 to 2025-11-25): POST carries one
JSON-RPC message, requests are answered on an SSE stream that opens with a priming event
(so a dropped connection can resume with GET + Last-Event-ID), notifications and responses
get 202. `/mcp/{id}/sse` + `/mcp/{id}/messages` speak the 2024-11-05 HTTP+SSE transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import (
    CLIENT_IP_KEY,
    PRINCIPAL_KEY,
    BodyTooLarge,
    get_header,
    json_error,
    query_param,
    read_body,
    respond,
    rpc_error,
    stopping_event,
)
from mcp_barbican.audit.events import AuditEvent, arguments_for_audit, request_fields
from mcp_barbican.exceptions import UpstreamError
from mcp_barbican.jsonrpc import Message
from mcp_barbican.security.authorization import ACCESS_KEY
from mcp_barbican.security.limits import json_violation
from mcp_barbican.security.principal import principal_id
from mcp_barbican.server.quota import TooManySessions
from mcp_barbican.server.requests import (
    HEADER_MISMATCH,
    SUPPORTED_VERSIONS,
    accepts,
    header_mismatch,
    parse_event_id,
    sessionless,
    well_formed,
)
from mcp_barbican.server.runtime import CapacityError
from mcp_barbican.server.session import Session
from mcp_barbican.server.sse import SSE_HEADERS, pump, stream_answer
from mcp_barbican.server.streams import EventStream
from mcp_barbican.server.tracing import TRACE_KEY
from mcp_barbican.tracecontext import OUTGOING
from mcp_barbican.types import Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import LimitsConfig
    from mcp_barbican.metrics import RequestStats
    from mcp_barbican.server.identity import UpstreamIdentity
    from mcp_barbican.server.link import Link
    from mcp_barbican.server.quota import SessionQuota
    from mcp_barbican.server.seal import Sealer, SessionSeal

#: Methods counted under their own name in the metrics; any other is "other" (labels stay bounded).
METRIC_METHODS: Final = frozenset(
    {
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
    }
)

__all__ = ["GATE_KEY", "McpEndpoint"]

logger = logging.getLogger(__name__)

_SESSION_HEADER: Final = b"mcp-session-id"
#: Set by the aggregated endpoint when it runs this MCP's pipeline for one message: the endpoint
#: hands the admitted scope to the callable under this key instead of serving the request.
GATE_KEY: Final = "mcp_barbican.gate"


class Served(Protocol):
    """What an endpoint serves: one MCP's runtime, or the aggregated endpoint's."""

    id: str
    identity: UpstreamIdentity
    stats: RequestStats
    quota: SessionQuota

    @property
    def start_timeout(self) -> float: ...

    def new_session(
        self, principal: str | None, *, client_ip: str | None, legacy_sse: bool = False, who: object = None
    ) -> Session: ...

    async def initialize(
        self, session: Session, msg: Message, stream: EventStream, scope: Scope | None = None
    ) -> None: ...

    async def close_session(self, session: Session, *, reason: str = "closed") -> None: ...

    def get(self, session_id: str, principal: str | None) -> Session | None: ...

    @property
    def sealer(self) -> Sealer: ...

    def seal_resumable(self, session: Session) -> None: ...

    async def resume(
        self, session_id: str, seal: SessionSeal, *, client_ip: str | None, who: object = None
    ) -> Session | None: ...

    async def stateless(self) -> tuple[Link, Session]: ...

    async def discover(self, params: Any) -> Message: ...


class McpEndpoint:
    """Serves `/mcp/{id}`, `/mcp/{id}/sse` and `/mcp/{id}/messages` for one MCP."""

    def __init__(
        self, runtime: Served, *, limits: LimitsConfig, messages_path: str, audit: AuditTrail | None = None
    ) -> None:
        self.runtime = runtime
        #: None when nothing is recorded: the builder passes a trail only if it has a sink.
        self.audit = audit
        self.limits = limits
        self.max_body_size = limits.max_body_size
        self.messages_path = messages_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = scope.pop(GATE_KEY, None)  # taken out: the scope handed back must not hold its own receiver
        if gate is not None:
            gate(scope)
            return
        method = scope["method"]
        sub = scope.get("mcp_barbican.subpath", "")
        if sub == "":
            handler = {"POST": self.post, "GET": self.get, "DELETE": self.delete}.get(method)
        elif sub == "/sse":
            handler = self.legacy_connect if method == "GET" else None
        elif sub == "/messages":
            handler = self.legacy_post if method == "POST" else None
        else:
            await rpc_error(send, 404, jsonrpc.INVALID_REQUEST, "no such endpoint")
            return
        if handler is None:
            allow = {"": b"GET, POST, DELETE", "/sse": b"GET", "/messages": b"POST"}[sub]
            await rpc_error(
                send, 405, jsonrpc.INVALID_REQUEST, f"{method} is not allowed here", None, [(b"allow", allow)]
            )
            return
        await handler(scope, receive, send)

    # -- shared request checks ---------------------------------------------------------

    async def _read_message(self, scope: Scope, receive: Receive, send: Send) -> Message | None:
        """The POSTed JSON-RPC message, or None after answering the rejection."""
        content_type = (get_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            await rpc_error(send, 415, jsonrpc.INVALID_REQUEST, "Content-Type must be application/json")
            return None
        try:
            body = await read_body(scope, receive, self.max_body_size)
        except BodyTooLarge:
            limit = self.max_body_size
            await rpc_error(send, 413, jsonrpc.INVALID_REQUEST, f"request body is over the limit of {limit} bytes")
            return None
        try:
            msg = jsonrpc.loads(body)
        except ValueError:
            await rpc_error(send, 400, jsonrpc.PARSE_ERROR, "the body is not valid JSON")
            return None
        if isinstance(msg, list):
            await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, "JSON-RPC batches are not supported")
            return None
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not well_formed(msg):
            await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, "not a JSON-RPC 2.0 request, notification or response")
            return None
        violation = json_violation(msg, max_depth=self.limits.max_json_depth, max_string=self.limits.max_string_length)
        if violation is not None:
            await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, violation, msg.get("id"))
            return None
        if self.runtime.identity.exchange is not None and not await self.runtime.identity.ready(
            scope, send, msg.get("id")
        ):
            return None
        return msg

    async def _session(self, scope: Scope, send: Send, session_id: str | None) -> Session | None:
        if not session_id:
            await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, "Bad Request: missing session id")
            return None
        principal = principal_id(scope)
        session = self.runtime.get(session_id, principal)
        if session is None:
            seal = self.runtime.sealer.open(session_id)
            if seal is not None and seal.principal == principal:  # another principal's session is not found
                try:
                    session = await self.runtime.resume(
                        session_id, seal, client_ip=scope.get(CLIENT_IP_KEY), who=scope.get(PRINCIPAL_KEY)
                    )
                except TooManySessions as exc:
                    await json_error(send, 429, "too_many_sessions", str(exc))
                    return None
                except CapacityError as exc:
                    await rpc_error(send, 503, jsonrpc.UPSTREAM_ERROR, str(exc), None, [(b"retry-after", b"5")])
                    return None
                if session is not None and not session.announced:
                    session.announce(resumed=True, client=scope.get(CLIENT_IP_KEY))
        if session is None:
            await rpc_error(send, 404, jsonrpc.INVALID_REQUEST, "Session not found")
        return session

    async def _version_ok(self, scope: Scope, send: Send) -> bool:
        version = get_header(scope, b"mcp-protocol-version")
        if version is None or version.decode("latin-1") in SUPPORTED_VERSIONS:
            return True
        text = version.decode("latin-1")
        await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, f"Bad Request: unsupported protocol version {text!r}")
        return False

    # -- Streamable HTTP ---------------------------------------------------------------

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not accepts(scope, b"application/json") or not accepts(scope, b"text/event-stream"):
            message = "Not Acceptable: Accept must list application/json and text/event-stream"
            await rpc_error(send, 406, jsonrpc.INVALID_REQUEST, message)
            return
        msg = await self._read_message(scope, receive, send)
        if msg is None or not await self._version_ok(scope, send):
            return
        header = get_header(scope, _SESSION_HEADER)
        if header is None and "id" in msg and msg.get("method") == "initialize":
            await self._initialize(scope, receive, send, msg)
            return
        if header is None and "id" in msg and sessionless(msg):
            mismatch = header_mismatch(scope, msg)
            if mismatch is not None:
                await rpc_error(send, 400, HEADER_MISMATCH, mismatch, msg["id"])
                return
            await self._stateless(scope, send, receive, msg)
            return
        session = await self._session(scope, send, header.decode("latin-1") if header else None)
        if session is None:
            return
        if not await self._admit(scope, send, session, msg):
            return
        if "id" in msg and "method" in msg:
            if msg["method"] == "initialize":
                await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, "this session is already initialized", msg["id"])
                return
            stream = session.open_stream()
            started = time.perf_counter()
            await self._forward_request(scope, session, msg, stream)
            await stream_answer(send, receive, stream, [(_SESSION_HEADER, session.id.encode())])
            await self._record(scope, msg, started, stream)
            return
        await self._forward_other(scope, session, msg, send)

    async def _admit(self, scope: Scope, send: Send, session: Session, msg: Message) -> bool:
        """Whether to relay `msg` (else the refusal is answered): the pipeline in front decided it already."""
        return True

    async def _initialize(self, scope: Scope, receive: Receive, send: Send, msg: Message) -> None:
        try:
            session = self.runtime.new_session(
                principal_id(scope), client_ip=scope.get(CLIENT_IP_KEY), who=scope.get(PRINCIPAL_KEY)
            )
        except TooManySessions as exc:
            await json_error(send, 429, "too_many_sessions", str(exc))
            return
        except CapacityError as exc:
            await rpc_error(send, 503, jsonrpc.UPSTREAM_ERROR, str(exc), msg["id"], [(b"retry-after", b"5")])
            return
        stream = session.open_stream()
        try:
            await self.runtime.initialize(session, msg, stream, scope)
        except UpstreamError as exc:
            await self.runtime.close_session(session)
            await rpc_error(
                send, 502, jsonrpc.UPSTREAM_ERROR, f"upstream {self.runtime.id!r} is unavailable: {exc}", msg["id"]
            )
            return
        await stream.wait(1, self.runtime.start_timeout)
        if stream.done and stream.final_data is not None and session.started and not session.established:
            # No session came of it: answer without a session id. A failure to reach the
            # upstream is a 502; the upstream's own refusal is its JSON-RPC error as is.
            await self.runtime.close_session(session)
            failure = jsonrpc.loads(stream.final_data)
            status = 502 if failure.get("error", {}).get("code") == jsonrpc.UPSTREAM_ERROR else 200
            await respond(send, status, stream.final_data, [(b"content-type", b"application/json")])
            return
        if session.established:
            self.runtime.seal_resumable(session)
            session.announce(client=scope.get(CLIENT_IP_KEY))
        await stream_answer(send, receive, stream, [(_SESSION_HEADER, session.id.encode())])

    async def _stateless(self, scope: Scope, send: Send, receive: Receive, msg: Message) -> None:
        """Relay a request that belongs to no session (2026-07-28 era) on the stateless link."""
        try:
            if msg["method"] == "server/discover":
                response = await self.runtime.discover(msg.get("params"))
                response["id"] = msg["id"]
                await respond(send, 200, jsonrpc.dumps(response), [(b"content-type", b"application/json")])
                return
            if self.runtime.identity.per_principal:
                # The sessionless link serves every caller: it cannot carry one caller's identity.
                message = f"MCP {self.runtime.id!r} sends each caller's identity upstream: initialize a session first"
                await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, message, msg["id"])
                return
            link, holder = await self.runtime.stateless()
        except UpstreamError as exc:
            message = f"upstream {self.runtime.id!r} is unavailable: {exc}"
            await rpc_error(send, 502, jsonrpc.UPSTREAM_ERROR, message, msg["id"])
            return
        stream = holder.open_stream()
        started = time.perf_counter()
        await self._forward_request(scope, holder, msg, stream)
        await stream_answer(send, receive, stream, [])
        await self._record(scope, msg, started, stream)
        holder.streams.pop(stream.stream_id, None)

    async def _forward_request(self, scope: Scope, session: Session, msg: Message, stream: EventStream) -> None:
        assert session.link is not None
        request_id = msg["id"]
        trace = scope.get(TRACE_KEY)  # telemetry on: the tool call gets its span (ended in _record)
        traced = trace.begin_tool(self.runtime.id, msg, scope) if trace and msg["method"] == "tools/call" else None
        try:
            await session.link.forward_request(session, msg, stream, scope.get(ACCESS_KEY))
        except UpstreamError as exc:
            stream.failed = True
            stream.push(jsonrpc.error_body(request_id, jsonrpc.UPSTREAM_ERROR, str(exc)), final=True)
        finally:
            if traced is not None:
                OUTGOING.reset(traced)

    async def _record(self, scope: Scope, msg: Message, started: float | None, stream: EventStream) -> None:
        """Count a relayed request (`started` None: its answer comes later, on a legacy stream); audit tool calls."""
        method = msg["method"] if msg["method"] in METRIC_METHODS else "other"
        elapsed = None if started is None else time.perf_counter() - started
        self.runtime.stats.record(method, elapsed, failed=stream.failed)
        trace = scope.get(TRACE_KEY)
        if trace is not None:
            trace.end_tool(stream)
        if self.audit is not None and msg["method"] == "tools/call":
            raw = msg.get("params")
            params: dict[str, Any] = raw if isinstance(raw, dict) else {}
            await self._audit_tool_call(scope, self.runtime.id, params, elapsed, stream)

    async def _audit_tool_call(
        self, scope: Scope, mcp_id: str, params: dict[str, Any], elapsed: float | None, stream: EventStream
    ) -> None:
        """One `tool_call` event: `params` as the MCP got them (its own tool name)."""
        assert self.audit is not None
        tool = str(params.get("name", ""))[:256]
        success, error = not stream.failed, "upstream unreachable" if stream.failed else None
        if elapsed is not None and success and stream.final_data is not None:
            answer = stream.final_message or jsonrpc.loads(stream.final_data)
            if "error" in answer:
                success, error = False, str((answer.get("error") or {}).get("message", "error"))[:256]
            elif (answer.get("result") or {}).get("isError"):
                success, error = False, "the tool reported an error"
        event = AuditEvent(
            "tool_call",
            "tools/call",
            success,
            resource=f"tool:{mcp_id}/{tool}",
            user=principal_id(scope),
            error=error,
            mcp=mcp_id,
            tool=tool,
            latency_ms=None if elapsed is None else round(elapsed * 1000, 3),
            details={"arguments": arguments_for_audit(params.get("arguments", {}), self.audit.arguments)},
            **request_fields(scope),
        )
        await self.audit.emit(event)

    async def _forward_other(self, scope: Scope, session: Session, msg: Message, send: Send) -> None:
        """Notifications and responses: relay, then 202 with no body."""
        link = session.link
        if link is None:
            await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, "the session is not initialized yet")
            return
        try:
            if "method" in msg:
                await link.forward_notification(session, msg)
            elif not await link.forward_response(session, msg):
                logger.debug("dropped a response to no pending server request on %r", self.runtime.id)
        except UpstreamError as exc:
            await rpc_error(send, 502, jsonrpc.UPSTREAM_ERROR, str(exc))
            return
        await respond(send, 202)

    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not accepts(scope, b"text/event-stream"):
            await rpc_error(send, 406, jsonrpc.INVALID_REQUEST, "Not Acceptable: Accept must list text/event-stream")
            return
        if not await self._version_ok(scope, send):
            return
        header = get_header(scope, _SESSION_HEADER)
        session = await self._session(scope, send, header.decode("latin-1") if header else None)
        if session is None:
            return
        headers = [(_SESSION_HEADER, session.id.encode())]
        last_event = get_header(scope, b"last-event-id")
        if last_event is not None:
            resumed = parse_event_id(last_event.decode("latin-1"))
            stream = session.streams.get(resumed[0]) if resumed else None
            if resumed is None or stream is None or stream.attached:
                await rpc_error(send, 404, jsonrpc.INVALID_REQUEST, "unknown or busy Last-Event-ID stream")
                return
            await stream_answer(
                send, receive, stream, headers, start=resumed[1] + 1, prime=False, stopping=stopping_event(scope)
            )
            return
        stream = session.get_stream
        if stream.attached:
            await rpc_error(send, 409, jsonrpc.INVALID_REQUEST, "Conflict: this session already has a GET stream open")
            return
        stopping = stopping_event(scope)
        await stream_answer(send, receive, stream, headers, start=stream.delivered, wait_first=False, stopping=stopping)

    async def delete(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = get_header(scope, _SESSION_HEADER)
        session = await self._session(scope, send, header.decode("latin-1") if header else None)
        if session is None:
            return
        await self.runtime.close_session(session, reason="delete")
        await respond(send, 204)

    # -- legacy HTTP+SSE ---------------------------------------------------------------

    async def legacy_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            session = self.runtime.new_session(
                principal_id(scope), client_ip=scope.get(CLIENT_IP_KEY), legacy_sse=True, who=scope.get(PRINCIPAL_KEY)
            )
        except TooManySessions as exc:
            await json_error(send, 429, "too_many_sessions", str(exc))
            return
        except CapacityError as exc:
            await rpc_error(send, 503, jsonrpc.UPSTREAM_ERROR, str(exc), None, [(b"retry-after", b"5")])
            return
        session.announce(client=scope.get(CLIENT_IP_KEY))
        endpoint = f"{scope.get('root_path', '')}{self.messages_path}?session_id={session.id}"
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send(
            {
                "type": "http.response.body",
                "body": b"event: endpoint\ndata: " + endpoint.encode() + b"\n\n",
                "more_body": True,
            }
        )
        stream = session.legacy_stream
        assert stream is not None
        # A stream whose client never initializes only holds a slot: it ends after init_timeout.
        self._init_deadline(session)
        try:
            await pump(send, receive, stream, 1, stopping_event(scope))
        finally:
            await self.runtime.close_session(session, reason="stream closed")

    def _init_deadline(self, session: Session) -> None:
        """Close a legacy stream after init_timeout unless an upstream session came of it (or is coming)."""
        timeout = self.runtime.quota.init_timeout

        def expire() -> None:
            if session.closed or session.established:
                return
            if session.inflight:  # initialize is on its way upstream: look again later
                asyncio.get_running_loop().call_later(timeout, expire)
                return
            logger.info("legacy SSE stream on %r closed: not initialized within init_timeout", self.runtime.id)
            assert session.legacy_stream is not None
            session.legacy_stream.close()

        asyncio.get_running_loop().call_later(timeout, expire)

    async def legacy_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = await self._session(scope, send, query_param(scope, "session_id") or query_param(scope, "sessionId"))
        if session is None:
            return
        msg = await self._read_message(scope, receive, send)
        if msg is None:
            return
        stream = session.legacy_stream
        assert stream is not None
        if "id" in msg and "method" in msg:
            if msg["method"] == "initialize" and not session.started:
                try:
                    await self.runtime.initialize(session, msg, stream, scope)
                except UpstreamError as exc:
                    stream.push(jsonrpc.error_body(msg["id"], jsonrpc.UPSTREAM_ERROR, str(exc)))
            elif not session.started:
                # Answered on the stream, as any legacy reply; the modern era has no HTTP+SSE form.
                code = jsonrpc.METHOD_NOT_FOUND if msg["method"] == "server/discover" else jsonrpc.INVALID_REQUEST
                stream.push(jsonrpc.error_body(msg["id"], code, f"{msg['method']} before initialize"))
            elif await self._admit(scope, send, session, msg):
                await self._forward_request(scope, session, msg, stream)
                await self._record(scope, msg, None, stream)
            else:
                return
            await respond(send, 202)
            return
        if await self._admit(scope, send, session, msg):
            await self._forward_other(scope, session, msg, send)
