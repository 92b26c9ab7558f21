"""`/mcp`, `/sse` and `/messages`: one endpoint for every MCP the caller may use.

The transport rules are those of `/mcp/{id}` (the same endpoint class). In front, the request's
credential is matched against every MCP (server/reach.py): one that no MCP accepts is a 401 and
counts toward a ban. The session belongs to the caller's principal. Every message bound for an
MCP then passes that MCP's own pipeline (gate.py): a request to one MCP that its pipeline
refuses gets that refusal as it is (401, 403, 429 ...), a merged listing leaves the refusing MCP
out, and authorization filters and refuses exactly as on `/mcp/{id}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from hmac import compare_digest
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import PRINCIPAL_KEY, get_header, json_error, respond, rpc_error
from mcp_barbican.exceptions import UpstreamError
from mcp_barbican.jsonrpc import Message
from mcp_barbican.security.principal import principal_id
from mcp_barbican.server.aggregate.fan import Fan, FanSession, Routed, routed
from mcp_barbican.server.aggregate.gate import Refusal, through
from mcp_barbican.server.aggregate.runtime import CREDENTIALS_KEY, REACH_KEY, Credentials, FanRuntime
from mcp_barbican.server.endpoint import METRIC_METHODS, McpEndpoint
from mcp_barbican.server.link import Pending
from mcp_barbican.server.reach import Reach, reach, refuse_unreached
from mcp_barbican.server.tracing import TRACE_KEY
from mcp_barbican.tracecontext import OUTGOING

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import LimitsConfig
    from mcp_barbican.server.aggregate.member import Member
    from mcp_barbican.server.control import McpRoute
    from mcp_barbican.server.session import Session
    from mcp_barbican.server.shields import Shields
    from mcp_barbican.server.streams import EventStream
    from mcp_barbican.types import Receive, Scope, Send

__all__ = ["AGGREGATE_PATHS", "FanEndpoint"]

logger = logging.getLogger(__name__)

#: The aggregated routes and the endpoint sub-path each is (as `/mcp/{id}` + sub-path).
AGGREGATE_PATHS: Final = {"/mcp": "", "/sse": "/sse", "/messages": "/messages"}
#: The members a message was admitted to, each with the scope its pipeline admitted it with.
_ADMITTED_KEY: Final = "mcp_barbican.admitted"
#: The session a POST names, before `_admit` checks the claim (`FanEndpoint._claimed`).
_CLAIMED_KEY: Final = "mcp_barbican.claimed"
#: Where the request goes by its prefix (`fan.routed`).
_NAMED_KEY: Final = "mcp_barbican.named"
#: A request admitted to one member: the member, the scope its pipeline admitted, the params it gets.
_ONE_KEY: Final = "mcp_barbican.one"
_One = tuple["Member", "Scope", dict[str, Any]]


class FanEndpoint(McpEndpoint):
    """Serves the aggregated routes over the MCPs in `routes` (the control plane's live table)."""

    def __init__(
        self,
        runtime: FanRuntime,
        routes: Mapping[str, McpRoute],
        shields: Shields,
        *,
        limits: LimitsConfig,
        audit: AuditTrail | None = None,
        challenge: Callable[[Scope], bytes] | None = None,
    ) -> None:
        super().__init__(runtime, limits=limits, messages_path="/messages", audit=audit)
        self.routes = routes
        self.shields = shields
        #: The WWW-Authenticate value of a 401 (with OAuth metadata where server.auth is OAuth).
        self._challenge = challenge
        self.runtime: FanRuntime = runtime
        self._credentials = Credentials(runtime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        claimed = self._claimed(scope)
        if claimed is not None:
            assert claimed.reach is not None
            scope[_CLAIMED_KEY] = claimed
            scope[REACH_KEY] = claimed.reach
            principal = claimed.reach.principal
            if principal is not None:
                scope[PRINCIPAL_KEY] = principal
            await super().__call__(scope, receive, send)
            return
        key, session_id = self._credentials.of(self.routes.values(), scope)
        found = self._remembered(session_id, key)
        if found is None:
            fresh = await reach(self.routes.values(), scope)
            if await refuse_unreached(self.shields, scope, send, fresh, self._challenge):
                return
            assert isinstance(fresh, Reach)
            found = fresh
        if not found.routes:  # authenticated, but no MCP lets it use anything: as `/mcp/{id}` would answer
            self.shields.counters.authorization_denied += 1
            self.shields.counters.violation()
            await json_error(send, 403, "insufficient_scope", "this credential may use nothing of any MCP")
            return
        scope[REACH_KEY] = found
        scope[CREDENTIALS_KEY] = key
        principal = found.principal
        if principal is not None:
            scope[PRINCIPAL_KEY] = principal
        await super().__call__(scope, receive, send)

    def _claimed(self, scope: Scope) -> FanSession | None:
        """The session a POST to `/mcp` names, taken at its word until `_admit` checks the claim.

        Every message a POST carries reaches `_admit` before anything acts on the session. There, a
        message to one MCP is checked by that MCP's own authentication (it must name the principal
        the session recorded for that MCP); anything else by the credentials the session opened
        with (`_verified`). A change of the served MCPs since the session opened: no claim.
        """
        if scope["method"] != "POST" or scope.get("mcp_barbican.subpath"):
            return None
        header = get_header(scope, b"mcp-session-id")
        session = self.runtime.sessions.get(header.decode("latin-1")) if header is not None else None
        if session is None or session.reach is None or session.generation != self.runtime.generation:
            return None
        return session

    async def _verified(self, scope: Scope, send: Send, claimed: FanSession) -> bool:
        """Whether the request's credentials are those the claimed session opened with (else 404, or 401)."""
        key, _session_id = self._credentials.of(self.routes.values(), scope)
        scope[CREDENTIALS_KEY] = key
        if claimed.credentials is not None and compare_digest(claimed.credentials, key):
            return True
        fresh = await reach(self.routes.values(), scope)
        if await refuse_unreached(self.shields, scope, send, fresh, self._challenge):
            return False
        assert isinstance(fresh, Reach)
        principal = fresh.principal
        if (principal.id if principal is not None else None) != claimed.principal:
            await rpc_error(send, 404, jsonrpc.INVALID_REQUEST, "Session not found")
            return False
        scope[REACH_KEY] = fresh
        return True

    def _remembered(self, session_id: bytes | None, key: bytes) -> Reach | None:
        """The reach of the session the request names, when it comes with the credential that opened it.

        Every message to an MCP still passes that MCP's pipeline, which authenticates the
        credential again (expiry and revocation included); this saves asking every MCP which
        principal the same bytes are on each request. A change of the served MCPs starts afresh.
        """
        session = self.runtime.sessions.get(session_id.decode("latin-1")) if session_id is not None else None
        if session is None or session.credentials is None or session.reach is None:
            return None
        return session.reach if compare_digest(session.credentials, key) else None

    async def _admit(self, scope: Scope, send: Send, session: Session, msg: Message) -> bool:
        """Run the pipeline of every MCP `msg` goes to; answer the refusal when none admits it."""
        claimed: FanSession | None = scope.pop(_CLAIMED_KEY, None)
        fan = session.fan if isinstance(session, FanSession) else None
        if fan is None:
            return claimed is None or await self._verified(scope, send, claimed)  # not initialized: the relay says so
        named = routed(msg)
        scope[_NAMED_KEY] = named
        if named is not None:  # the common request: to one member, which may not need an exchange
            members = fan.sync(scope[REACH_KEY])
            member = fan.members.get(named[0])
            if member is not None and member in members and member.runtime.identity.exchange is None:
                outcome = await through(member.route.app, scope, msg)
                if isinstance(outcome, Refusal):
                    await outcome.send_to(send)
                    return False
                if claimed is not None:
                    expected = claimed.reach.principal_ids.get(member.id) if claimed.reach is not None else None
                    if expected is None:  # an MCP without authentication vouches for nobody: check the claim
                        if not await self._verified(scope, send, claimed):
                            return False
                    elif principal_id(outcome) != expected:
                        await rpc_error(send, 404, jsonrpc.INVALID_REQUEST, "Session not found")
                        return False
                scope[_ONE_KEY] = (member, outcome, named[1])
                return True
        if claimed is not None and not await self._verified(scope, send, claimed):
            return False
        members = fan.sync(scope[REACH_KEY])
        targets = fan.targets(msg, members, named)
        admitted: dict[str, Scope] = {}
        refused: list[tuple[Member, Refusal]] = []
        for member in targets:
            outcome = await through(member.route.app, scope, msg)
            if not isinstance(outcome, Refusal) and member.runtime.identity.exchange is not None:
                failure = Refusal()
                if not await member.runtime.identity.ready(outcome, failure.capture, msg.get("id")):
                    outcome = failure
            if isinstance(outcome, Refusal):
                refused.append((member, outcome))
            else:
                admitted[member.id] = outcome
        if refused and not admitted:
            await refused[0][1].send_to(send)
            return False
        for member, refusal in refused:
            logger.info("MCP %r left out of %s: %s", member.id, msg.get("method", "a response"), refusal.reason)
        scope[_ADMITTED_KEY] = admitted
        return True

    async def _forward_request(self, scope: Scope, session: Session, msg: Message, stream: EventStream) -> None:
        request_id = msg["id"]
        session.inflight[request_id] = Pending(session, request_id, 0, stream, msg["method"], None)
        one: _One | None = scope.get(_ONE_KEY)
        fan = _fan(session)
        trace = scope.get(TRACE_KEY)  # telemetry on: the tool call gets its span (ended in _record)
        traced = None
        if trace is not None and msg["method"] == "tools/call":
            traced = trace.begin_tool(one[0].id if one is not None else self.runtime.id, msg, scope)
        try:
            if one is not None:
                await fan.relay(one[0], one[1], one[2], msg, stream)
            else:
                await fan.request(scope.get(_ADMITTED_KEY, {}), msg, stream, scope.get(_NAMED_KEY))
        except UpstreamError as exc:
            stream.failed = True
            stream.push(jsonrpc.error_body(request_id, jsonrpc.UPSTREAM_ERROR, str(exc)), final=True)
        finally:
            if traced is not None:
                OUTGOING.reset(traced)
        if stream.done:  # answered here; a member's answer ends the request where it arrives
            session.inflight.pop(request_id, None)

    async def _forward_other(self, scope: Scope, session: Session, msg: Message, send: Send) -> None:
        fan = session.fan if isinstance(session, FanSession) else None
        if fan is None:
            await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, "the session is not initialized yet")
            return
        admitted = scope.get(_ADMITTED_KEY, {})
        try:
            if "method" in msg:
                await fan.notify(admitted, msg)
            else:
                await fan.respond(admitted, msg)
        except UpstreamError as exc:
            await rpc_error(send, 502, jsonrpc.UPSTREAM_ERROR, str(exc))
            return
        await respond(send, 202)

    async def _stateless(self, scope: Scope, send: Send, receive: Receive, msg: Message) -> None:
        if msg["method"] == "server/discover":
            response = await self.runtime.discover(msg.get("params"))
            response["id"] = msg["id"]
            await respond(send, 200, jsonrpc.dumps(response), [(b"content-type", b"application/json")])
            return
        message = "the aggregated endpoint keeps one session per client: send initialize first"
        await rpc_error(send, 400, jsonrpc.INVALID_REQUEST, message, msg["id"])

    async def _record(self, scope: Scope, msg: Message, started: float | None, stream: EventStream) -> None:
        """Count a request routed to one MCP in that MCP's metrics (and audit a tool call there); the rest here."""
        method: str = msg["method"]
        label = method if method in METRIC_METHODS else "other"
        elapsed = None if started is None else time.perf_counter() - started
        trace = scope.get(TRACE_KEY)
        if trace is not None:
            trace.end_tool(stream)
        one: _One | None = scope.get(_ONE_KEY)
        if one is not None:
            mcp_id, runtime, member_scope, params = one[0].id, one[0].runtime, one[1], one[2]
        else:  # refused as unknown, or answered here
            named: Routed | None = scope.get(_NAMED_KEY)
            admitted: dict[str, Scope] = scope.get(_ADMITTED_KEY, {})
            target = self.routes.get(named[0]) if named is not None and named[0] in admitted else None
            if named is None or target is None:
                self.runtime.stats.record(label, elapsed, failed=stream.failed)
                return
            mcp_id, runtime, member_scope, params = named[0], target.runtime, admitted[named[0]], named[1]
        runtime.stats.record(label, elapsed, failed=stream.failed)
        if self.audit is not None and method == "tools/call":
            await self._audit_tool_call(member_scope, mcp_id, params, elapsed, stream)


def _fan(session: Session) -> Fan:
    assert isinstance(session, FanSession) and session.fan is not None
    return session.fan
