"""One aggregated session: a client's view of every MCP it reaches, one member per MCP.

Requests naming a tool, prompt or resource go to the member whose prefix they carry; listings go
to every member at once and come back merged (an MCP that fails or refuses is left out, and the
log says why); `ping` and `logging/setLevel` are answered here. The upstreams' requests to the
client get ids unique in this session, and the client's answers find their way back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamError
from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.server.aggregate.member import Member
from mcp_barbican.server.aggregate.names import SEPARATOR, decode_cursor, encode_cursor
from mcp_barbican.server.aggregate.rewrite import LISTED, rewrite_result, route
from mcp_barbican.server.link import Link
from mcp_barbican.server.reach import Reach
from mcp_barbican.server.session import Session

if TYPE_CHECKING:
    from mcp_barbican.server.control import McpRoute
    from mcp_barbican.server.streams import EventStream
    from mcp_barbican.types import Scope

__all__ = ["AGGREGATE_ID", "ROUTED", "Fan", "FanSession", "Routed", "routed"]

#: Where a request naming one thing goes: the MCP id and the params as that MCP knows them.
Routed = tuple[str, dict[str, Any]]

logger = logging.getLogger(__name__)

#: The aggregated endpoint's name where an MCP id would be (sessions, logs, metrics).
AGGREGATE_ID: Final = "*"
#: Requests a member answers for its prefix (the rest are answered here or refused).
ROUTED: Final = frozenset(
    {
        "tools/call",
        "prompts/get",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
    }
)
#: Notifications from the client every opened member gets.
_BROADCAST: Final = frozenset({"notifications/roots/list_changed"})


def routed(msg: Message) -> Routed | None:
    """Where a client's request goes by its prefix (None: it names nothing of an MCP)."""
    method = msg.get("method")
    if method == "tools/call":  # the common request, decided here without the general table
        params = msg.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            return None
        mcp_id, separator, rest = name.partition(SEPARATOR)
        return (mcp_id, {**params, "name": rest}) if separator and mcp_id and rest else None  # type: ignore[dict-item]
    return route(method, msg.get("params")) if method in ROUTED else None


class FanSession(Session):
    """A client session of the aggregated endpoint."""

    def __init__(self, principal: str | None, *, legacy_sse: bool = False, session_id: str | None = None) -> None:
        super().__init__(AGGREGATE_ID, principal, legacy_sse=legacy_sse, session_id=session_id)
        self.fan: Fan | None = None
        #: The MCPs the session's credentials reached when it opened, and what decided it (Credentials.of).
        self.reach: Reach | None = None
        self.credentials: bytes | None = None
        #: The route table's generation when the session opened.
        self.generation = -1

    @property
    def started(self) -> bool:
        return self.fan is not None

    @property
    def established(self) -> bool:
        return self.fan is not None


class Fan:
    """The members of one aggregated session and the ids that cross it."""

    def __init__(self, session: FanSession, init_params: dict[str, Any]) -> None:
        self.session = session
        #: The client's initialize params: each member's upstream session opens with them.
        self.init_params = init_params
        self.members: dict[str, Member] = {}
        #: Id the client sees for an upstream's request -> (member, the id its session gave it).
        self.server_requests: dict[int, tuple[Member, RequestId]] = {}
        self._next_server_request = 0
        self.log_level: str | None = None
        #: The last reach synced and its members (a session's requests mostly bring the same one).
        self._synced: tuple[Reach | None, list[Member]] = (None, [])

    def listening(self) -> bool:
        """Whether the client holds a stream that unrelated messages reach (members stay open meanwhile)."""
        return self.session.get_stream.attached or any(s.attached for s in self.session.streams.values())

    def sync(self, found: Reach) -> list[Member]:
        """The members for the MCPs the request reaches now (new MCPs join; a replaced MCP starts afresh)."""
        if found is self._synced[0]:
            return self._synced[1]
        members = self._members([route for route, _principal in found.routes])
        self._synced = (found, members)
        return members

    def _members(self, reached: Sequence[McpRoute]) -> list[Member]:
        found = []
        for current in reached:
            member = self.members.get(current.mcp.id)
            if member is None or member.route is not current:
                if member is not None:
                    asyncio.ensure_future(member.aclose())
                member = self.members[current.mcp.id] = Member(self, current)
            found.append(member)
        return found

    def targets(self, msg: Message, members: Sequence[Member], named: Routed | None) -> list[Member]:
        """The members `msg` goes to (each passes its MCP's pipeline first); `named`: its `routed()`."""
        if named is not None:
            member = self.members.get(named[0])
            return [member] if member is not None and member in members else []  # members: the current reach
        method = msg.get("method")
        if "method" not in msg:  # a response to an upstream's request
            asked = self.server_requests.get(msg.get("id")) if isinstance(msg.get("id"), int) else None  # type: ignore[arg-type]
            return [asked[0]] if asked is not None and asked[0] in members else []
        if "id" not in msg:
            if method == "notifications/cancelled":
                request_id = (msg.get("params") or {}).get("requestId")
                return [m for m in members if m.cancel(request_id)]
            return [m for m in members if m.inner is not None] if method in _BROADCAST else []
        if method in LISTED:
            kind = str(method).partition("/")[0]
            return [m for m in members if m.declares(kind) and self._usable(m, str(method))]
        if method == "logging/setLevel":
            return [m for m in members if m.inner is not None and "logging" in m.capabilities]
        return []

    @staticmethod
    def _usable(member: Member, method: str) -> bool:
        reason = member.unusable()
        if reason is not None:
            logger.info("MCP %r left out of the merged %s: %s", member.id, method, reason)
        return reason is None

    # -- client -> upstreams -----------------------------------------------------------

    async def request(
        self, admitted: Mapping[str, Scope], msg: Message, stream: EventStream, named: Routed | None
    ) -> None:
        """Answer a client's request on `stream`: `admitted`, the members whose pipeline let it through."""
        method: str = msg["method"]
        if named is not None:
            scope = admitted.get(named[0])
            if scope is None:
                Link.refuse_unknown(msg, stream)
                return
            await self.relay(self.members[named[0]], scope, named[1], msg, stream)
        elif method in ROUTED:  # names nothing of an MCP the caller reaches
            Link.refuse_unknown(msg, stream)
        elif method == "ping":
            _answer(stream, msg["id"], {})
        elif method == "logging/setLevel":
            await self._set_level(admitted, msg, stream)
        elif method in LISTED:
            await self._listing(admitted, msg, stream)
        else:
            unknown = jsonrpc.error_body(msg["id"], jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}")
            stream.push(unknown, final=True)

    async def relay(
        self, member: Member, scope: Scope, params: dict[str, Any], msg: Message, stream: EventStream
    ) -> None:
        """Send a client's request to one member (`params` as it knows them); not reaching it is the answer."""
        try:
            await member.relay(scope, {**msg, "params": params}, stream, msg)
        except UpstreamError as exc:
            stream.failed = True
            message = f"upstream {member.id!r} is unavailable: {exc}"
            stream.push(jsonrpc.error_body(msg["id"], jsonrpc.UPSTREAM_ERROR, message), final=True)

    async def _listing(self, admitted: Mapping[str, Scope], msg: Message, stream: EventStream) -> None:
        method: str = msg["method"]
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        assert isinstance(params, dict)
        cursors: dict[str, str] | None = None
        if params.get("cursor") is not None:
            cursors = decode_cursor(params["cursor"])
            if cursors is None or not cursors.keys() <= self.members.keys():  # we never name an MCP not reached
                stream.push(jsonrpc.error_body(msg["id"], jsonrpc.INVALID_PARAMS, "Invalid cursor"), final=True)
                return
        asked = [mcp_id for mcp_id in admitted if cursors is None or mcp_id in cursors]
        parts = await asyncio.gather(
            *(self._part(mcp_id, admitted[mcp_id], msg, params, cursors, stream) for mcp_id in asked)
        )
        list_key = LISTED[method][0]
        merged: list[Any] = []
        more: dict[str, str] = {}
        failures = [f"{mcp_id}: {part}" for mcp_id, part in zip(asked, parts, strict=True) if isinstance(part, str)]
        if cursors is not None and len(failures) == len(asked):
            # An empty last page would end the client's listing: say the rest could not be had (it may retry).
            reason = "; ".join(failures) or "none of the MCPs it continues is available now"
            message = f"this listing cannot be continued: {reason}"
            stream.push(jsonrpc.error_body(msg["id"], jsonrpc.UPSTREAM_ERROR, message), final=True)
            return
        for mcp_id, result in zip(asked, parts, strict=True):
            if isinstance(result, str):
                continue
            merged.extend(result.get(list_key) or [])
            if isinstance(result.get("nextCursor"), str) and result["nextCursor"]:
                more[mcp_id] = result["nextCursor"]
        answer: dict[str, Any] = {list_key: merged}
        next_cursor = encode_cursor(more)
        if next_cursor is not None:
            answer["nextCursor"] = next_cursor
        _answer(stream, msg["id"], answer)

    async def _part(
        self,
        mcp_id: str,
        scope: Scope,
        msg: Message,
        params: dict[str, Any],
        cursors: dict[str, str] | None,
        stream: EventStream,
    ) -> dict[str, Any] | str:
        """One member's page of a merged listing; why it failed (and a log line) when it did."""
        own = {key: value for key, value in params.items() if key != "cursor"}
        if cursors is not None:
            own["cursor"] = cursors[mcp_id]
        method: str = msg["method"]
        try:
            response = await self.members[mcp_id].ask(scope, {**msg, "params": own}, stream)
        except UpstreamError as exc:
            logger.warning("MCP %r left out of the merged %s: %s", mcp_id, method, exc)
            return str(exc)
        result = response.get("result")
        if not isinstance(result, dict):
            error = response.get("error") or {}
            reason = str(error.get("message", error) if isinstance(error, dict) else error)[:200]
            logger.warning("MCP %r left out of the merged %s: %s", mcp_id, method, reason)
            return reason
        rewrite_result(mcp_id, method, result)
        return result

    async def _set_level(self, admitted: Mapping[str, Scope], msg: Message, stream: EventStream) -> None:
        level = (msg.get("params") or {}).get("level")
        self.log_level = level if isinstance(level, str) else None
        for mcp_id, scope in admitted.items():
            try:
                await self.members[mcp_id].ask(scope, dict(msg), stream)
            except UpstreamError as exc:
                logger.info("MCP %r did not take the log level: %s", mcp_id, exc)
        _answer(stream, msg["id"], {})

    async def notify(self, admitted: Mapping[str, Scope], msg: Message) -> None:
        method = msg["method"]
        if method == "notifications/initialized":
            self.session.initialized = True
            return
        for mcp_id in admitted:
            await self.members[mcp_id].notify(jsonrpc.loads(jsonrpc.dumps(msg)))

    async def respond(self, admitted: Mapping[str, Scope], msg: Message) -> None:
        down = msg.get("id")
        asked = self.server_requests.pop(down, None) if isinstance(down, int) else None
        if asked is None or asked[0].id not in admitted:
            return
        msg["id"] = asked[1]
        await asked[0].respond(msg)

    # -- upstreams -> client -----------------------------------------------------------

    def adopt(self, member: Member, request_id: RequestId) -> int:
        """The id the client sees for an upstream's request (the member's session numbered it already)."""
        self._next_server_request += 1
        self.server_requests[self._next_server_request] = (member, request_id)
        return self._next_server_request

    def release(self, member: Member, request_id: Any) -> int | None:
        """The client's id of an upstream request the upstream cancelled (None: none pending)."""
        for down, (asker, upstream_id) in self.server_requests.items():
            if asker is member and upstream_id == request_id:
                del self.server_requests[down]
                return down
        return None

    def list_changed(self, msg: Message) -> None:
        self.session.get_stream.push(jsonrpc.dumps({"jsonrpc": "2.0", "method": msg["method"]}))

    async def aclose(self) -> None:
        for member in list(self.members.values()):
            await member.aclose()
        self.members.clear()
        self.server_requests.clear()


def _answer(stream: EventStream, request_id: RequestId, result: dict[str, Any]) -> None:
    answer = {"jsonrpc": "2.0", "id": request_id, "result": result}
    stream.push(jsonrpc.dumps(answer), final=True, message=answer)
