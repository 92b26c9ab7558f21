"""The aggregated endpoint's sessions: each answers `initialize` itself and opens its members lazily.

Its capabilities are the union of what the reached MCPs declared when last probed, with
`listChanged` on every list (an MCP may join or change at any time). A session counts once in
the caller's session quota; each member's upstream session counts too, in its MCP's runtime,
like any session of that MCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import __version__, jsonrpc
from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.exceptions import UpstreamError, UpstreamUnavailable
from mcp_barbican.metrics import RequestStats
from mcp_barbican.security.mtls import certificate_pem
from mcp_barbican.server.aggregate.fan import AGGREGATE_ID, Fan, FanSession
from mcp_barbican.server.identity import UpstreamIdentity
from mcp_barbican.server.quota import Held, SessionQuota
from mcp_barbican.server.reach import Reach
from mcp_barbican.server.requests import SUPPORTED_VERSIONS
from mcp_barbican.server.runtime import LATEST_LEGACY_VERSION, CapacityError
from mcp_barbican.server.seal import Sealer, SessionSeal, new_replica_id
from mcp_barbican.server.session import expired, sweep_interval

if TYPE_CHECKING:
    from mcp_barbican.jsonrpc import Message
    from mcp_barbican.server.control import McpRoute
    from mcp_barbican.server.link import Link
    from mcp_barbican.server.session import Session
    from mcp_barbican.server.streams import EventStream
    from mcp_barbican.types import Scope

__all__ = ["REACH_KEY", "FanRuntime", "union_capabilities"]

logger = logging.getLogger(__name__)

#: The request's `Reach` (server/reach.py), put in the scope by the aggregated endpoint.
REACH_KEY: Final = "mcp_barbican.reach"
#: What the request's reach depends on (`Credentials.of`), put in the scope beside it.
CREDENTIALS_KEY: Final = "mcp_barbican.credentials"
#: Aggregated sessions held at once, over every caller (each is bounded by the caller's quota too).
MAX_SESSIONS: Final = 10_000
_LISTS: Final = ("tools", "prompts", "resources")


def union_capabilities(declared: list[dict[str, Any]]) -> dict[str, Any]:
    """What the aggregated endpoint declares: every list any MCP has (always tools), logging and completions."""
    capabilities: dict[str, Any] = {"tools": {"listChanged": True}}
    for one in declared:
        for key in _LISTS:
            if key in one:
                capabilities[key] = {**capabilities.get(key, {}), "listChanged": True}
        if isinstance(one.get("resources"), dict) and one["resources"].get("subscribe"):
            capabilities["resources"]["subscribe"] = True
        for key in ("logging", "completions"):
            if key in one:
                capabilities[key] = {}
    return capabilities


class Credentials:
    """What decides which MCPs a request reaches, besides the MCPs: its credentials and its address."""

    def __init__(self, runtime: FanRuntime) -> None:
        self._runtime = runtime
        self._generation = -1
        self._headers: frozenset[bytes] = frozenset()
        self._certificates = False

    def of(self, routes: Iterable[McpRoute], scope: Scope) -> tuple[bytes, bytes | None]:
        """A key equal for two requests that reach the same MCPs as the same principals (while the MCPs
        stay), and the session id the request names (one pass over the headers).

        The key is a digest: the session keeps no credential, and comparing it takes the same time
        wherever it differs.
        """
        if self._generation != self._runtime.generation:
            table = list(routes)
            self._headers = frozenset(r.auth.header.lower().encode("latin-1") for r in table if r.auth.type != "mtls")
            self._certificates = any(r.auth.type == "mtls" for r in table)
            self._generation = self._runtime.generation
        wanted = self._headers
        digest = hashlib.sha256(b"%d\n%s" % (self._generation, str(scope.get(CLIENT_IP_KEY)).encode()))
        session_id = None
        for name, value in scope["headers"]:
            if name in wanted:
                digest.update(b"\n%s:%s" % (name, value))
            elif name == b"mcp-session-id":
                session_id = value
        if self._certificates:
            digest.update(str(certificate_pem(scope)).encode())
        return digest.digest(), session_id


class FanRuntime:
    """The sessions of `/mcp` and `/sse`."""

    def __init__(self, *, idle_timeout: float, start_timeout: float, quota: SessionQuota) -> None:
        self.id = AGGREGATE_ID
        self.idle_timeout = idle_timeout
        self.quota = quota
        self.stats = RequestStats()
        #: The aggregated endpoint sends no identity of its own: each member's runtime sends its own.
        self.identity = UpstreamIdentity(AGGREGATE_ID, None)
        self.sessions: dict[str, FanSession] = {}
        #: How session ids are made (the listener's; set by the app). Only this replica serves its sessions.
        self.sealer = Sealer([], new_replica_id())
        self._start_timeout = start_timeout
        self._sweeper: asyncio.Task[None] | None = None
        #: Counts changes of the served MCPs: a remembered reach is good for one generation.
        self.generation = 0

    @property
    def start_timeout(self) -> float:
        return self._start_timeout

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="sweep-aggregate")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions.values()):
            await self.close_session(session, reason="shutdown")

    # -- sessions ----------------------------------------------------------------------

    def new_session(
        self, principal: str | None, *, client_ip: str | None, legacy_sse: bool = False, who: object = None
    ) -> Session:
        session = FanSession(principal, legacy_sse=legacy_sse, session_id=self.sealer.new_id(AGGREGATE_ID, principal))
        holder = self.quota.hold(session, principal, client_ip, self._reclaim)
        if len(self.sessions) >= MAX_SESSIONS:
            self.quota.release(holder, session.id)
            raise CapacityError(f"the aggregated endpoint already has {len(self.sessions)} sessions")
        session.holder = holder
        self.sessions[session.id] = session
        return session

    def _reclaim(self, held: Held) -> None:
        session = self.sessions.get(held.id)
        if session is not None:
            logger.info("idle aggregated session closed: its principal opened one more than it may hold")
            fan = self._retire(session, "reclaimed")
            if fan is not None:
                asyncio.ensure_future(fan.aclose())

    async def initialize(self, session: Session, msg: Message, stream: EventStream, scope: Scope | None = None) -> None:
        """Answer `initialize` here: the members open when first used, with the client's params."""
        assert isinstance(session, FanSession) and scope is not None
        found = scope.get(REACH_KEY)
        assert isinstance(found, Reach)
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        assert isinstance(params, dict)
        asked = params.get("protocolVersion")
        version = asked if asked in SUPPORTED_VERSIONS and asked <= LATEST_LEGACY_VERSION else LATEST_LEGACY_VERSION
        session.capabilities = params.get("capabilities") or {}
        session.protocol_version = version
        fan = Fan(session, {**params, "protocolVersion": version})
        members = fan.sync(found)
        declared = [m.runtime.capabilities for m in members if m.runtime.capabilities is not None]
        result = {
            "protocolVersion": version,
            "capabilities": union_capabilities(declared),
            "serverInfo": {"name": "mcp-barbican", "title": "Every MCP this caller may use", "version": __version__},
        }
        session.fan = fan
        session.reach = found
        session.credentials = scope.get(CREDENTIALS_KEY)
        session.generation = self.generation
        answer = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
        stream.push(jsonrpc.dumps(answer), final=True, message=answer)

    def seal_resumable(self, session: Session) -> None:
        """Aggregated sessions stay with the replica that holds their members: their ids stay owned."""

    async def resume(
        self, session_id: str, seal: SessionSeal, *, client_ip: str | None, who: object = None
    ) -> Session | None:
        return None

    def get(self, session_id: str, principal: str | None) -> Session | None:
        session = self.sessions.get(session_id)
        if session is None or session.closed or session.principal != principal:
            return None
        session.touch()  # each member's session is touched when used; an idle one may expire and reopen
        return session

    async def close_session(self, session: Session, *, reason: str = "closed") -> None:
        assert isinstance(session, FanSession)
        fan = self._retire(session, reason)
        if fan is not None:
            await fan.aclose()

    def _retire(self, session: FanSession, reason: str) -> Fan | None:
        return session.fan if session.end(self.sessions, self.quota, reason) else None

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(sweep_interval(self.idle_timeout))
            for session in expired(self.sessions.values(), self.idle_timeout):
                logger.info("aggregated session expired after %.0fs idle", self.idle_timeout)
                with contextlib.suppress(UpstreamError):
                    await self.close_session(session, reason="idle")

    def announce_change(self) -> None:
        """An MCP was served, swapped or dropped: every session's lists may have changed."""
        self.generation += 1
        for session in self.sessions.values():
            if session.fan is not None:
                for kind in _LISTS:
                    session.fan.list_changed({"method": f"notifications/{kind}/list_changed"})

    # -- no sessionless requests -------------------------------------------------------

    async def stateless(self) -> tuple[Link, Session]:
        raise UpstreamUnavailable("the aggregated endpoint keeps one session per client: send initialize first")

    async def discover(self, params: Any) -> Message:
        message = "the aggregated endpoint keeps one session per client: send initialize"
        return jsonrpc.error_response(None, jsonrpc.METHOD_NOT_FOUND, message)
