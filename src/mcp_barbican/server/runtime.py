"""The live side of one configured MCP: its upstream status, links and client sessions.

At start the runtime probes its upstream (initialize + tools/list) so `/readyz` and the
admin API can tell connecting, ready and failed apart, and keeps probing with backoff while
it fails. In `isolated` mode each client session gets a link of its own (a child process
for stdio), at most `max_sessions` at once; in `shared` mode the client sessions of one
principal ride that principal's link (server/pool.py), at most `max_sessions` links at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import __version__, jsonrpc
from mcp_barbican.audit import AuditEvent
from mcp_barbican.exceptions import UpstreamError, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.metrics import RequestStats
from mcp_barbican.server.identity import UpstreamIdentity
from mcp_barbican.server.link import PROXY_CLIENT_CAPABILITIES, Link
from mcp_barbican.server.pool import CapacityError, SharedLinks
from mcp_barbican.server.quota import Held, SessionQuota
from mcp_barbican.server.seal import KIND_RESUMABLE, Sealer, SessionSeal, new_replica_id
from mcp_barbican.server.session import Session, expired, sweep_interval
from mcp_barbican.server.streams import EventStream
from mcp_barbican.server.toolgate import ToolGate
from mcp_barbican.server.tooling import ToolWatch, list_tools
from mcp_barbican.upstream import open_channel
from mcp_barbican.upstream.base import CloseHandler, IdentityHeaders, MessageHandler, UpstreamChannel
from mcp_barbican.upstream.tls import client_ssl_context

if TYPE_CHECKING:
    import aiohttp

    from mcp_barbican.audit import AuditTrail
    from mcp_barbican.config import McpConfig
    from mcp_barbican.egress import Egress
    from mcp_barbican.security.callguard import CallGuard
    from mcp_barbican.security.pins import ToolPins
    from mcp_barbican.types import Scope

__all__ = ["LATEST_LEGACY_VERSION", "CapacityError", "McpRuntime"]

logger = logging.getLogger(__name__)

LATEST_LEGACY_VERSION: Final = "2025-11-25"
#: Client sessions a shared-mode MCP may hold (its upstream sessions are bounded by max_sessions).
MAX_SHARED_CLIENTS: Final = 10_000
#: Probe retry backoff while an upstream fails: first delay, factor, ceiling (seconds).
PROBE_BACKOFF: Final = (1.0, 2.0, 60.0)
#: How long a legacy-only upstream's answer to `server/discover` is reused.
ERA_VERDICT_SECONDS: Final = 600.0
#: Who an admin REST tool call's integrity events name (the admin API audits the caller itself).
ADMIN_CALLER: Final = "admin"


def _proxy_init_params(capabilities: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    return {
        "protocolVersion": version or LATEST_LEGACY_VERSION,
        "capabilities": capabilities,
        "clientInfo": {"name": "mcp-barbican", "version": __version__},
    }


class McpRuntime:
    """Status, links and sessions of one MCP."""

    def __init__(
        self,
        mcp: McpConfig,
        *,
        idle_timeout: float,
        quota: SessionQuota,
        egress: Egress | None = None,
        guard: CallGuard | None = None,
        pins: ToolPins | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.mcp = mcp
        #: Told when the upstream goes down (`upstream.down`) and comes back (`upstream.up`); None: not recording.
        self.audit = audit
        #: The egress policy its HTTP connections pass (an MCP registered through the admin API), else None.
        self.egress = egress
        #: What `integrity` checks on tools/call (arguments, results), shared by every link; None: nothing.
        self.guard = guard
        self.id = mcp.id
        self.idle_timeout = idle_timeout
        #: Sessions per principal, shared by every MCP of the listener.
        self.quota = quota
        self.status = "connecting"
        self.last_error: str | None = None
        self.tool_count: int | None = None
        #: Requests relayed to the upstream per method: counts, failures to reach it, latency.
        self.stats = RequestStats()
        self.server_info: dict[str, Any] | None = None
        #: What the upstream declared when last probed (None: never reached).
        self.capabilities: dict[str, Any] | None = None
        self.sessions: dict[str, Session] = {}
        #: How session ids are made and opened (the listener's, shared by every MCP; set by its route).
        self.sealer = Sealer([], new_replica_id())
        #: What the upstream learns of each caller (upstream_auth).
        self.identity = UpstreamIdentity(mcp.id, mcp.upstream_auth)
        self.shared = SharedLinks(self._open_shared, limit=mcp.max_sessions, idle_timeout=idle_timeout)
        self._stateless: tuple[Link, Session] | None = None
        self._legacy_verdict: tuple[float, Message] | None = None
        self._stateless_lock = asyncio.Lock()
        #: Sealed sessions being continued here, so concurrent first requests share one upstream link.
        self._resuming: dict[str, asyncio.Future[Session | None]] = {}
        self._control: Link | None = None
        self._control_lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        # Read the TLS files now: a ConfigError belongs to start-up (or the registration), never to a request.
        self._ssl = client_ssl_context(mcp.tls) if mcp.transport != "stdio" else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._closing = False
        #: The MCP's tool pins (shared with the runtime this one replaces, if any).
        self.pins = pins
        self.tool_watch = ToolWatch(self)
        #: The tool filter, pins and call guard every link of this MCP applies.
        self.tools = ToolGate(mcp.tool_filter, guard=guard, pins=pins, on_changed=self.tool_watch.relist)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.tool_watch.start()
        self._probe_task = self._spawn(self._probe_until_ready(), f"probe-{self.id}")
        self._spawn(self._sweep_idle(), f"sweep-{self.id}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        # A fresh context: the MCP's own work (probes, sweeps) is no request's, so it carries no request's trace.
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        self._closing = True
        self.tool_watch.stop()
        for task in list(self._tasks):
            task.cancel()
        for session in list(self.sessions.values()):
            # another replica may continue it
            await self.close_session(session, keep_upstream=session.resumable, reason="shutdown")
        await self.shared.aclose()
        await self.identity.aclose()
        for link in (self._stateless[0] if self._stateless else None, self._control):
            if link is not None:
                await link.aclose()
        if self._http is not None:
            await self._http.close()

    def _channel(
        self, on_message: MessageHandler, on_close: CloseHandler, identity: IdentityHeaders | None = None
    ) -> UpstreamChannel:
        return open_channel(self.mcp, on_message, on_close, http=self._http_session, identity=identity)

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            from mcp_barbican.upstream.http import make_http_session

            resolver = None if self.egress is None else self.egress.resolver(f"MCP {self.id!r}")
            self._http = make_http_session(self._ssl, connect_timeout=self.mcp.start_timeout, resolver=resolver)
        return self._http

    def _new_link(self, *, shared: bool, guess_unrelated: bool = True, identity: IdentityHeaders | None = None) -> Link:
        return Link(
            self.id,
            self._channel if identity is None else functools.partial(self._channel, identity=identity),
            shared=shared,
            start_timeout=self.mcp.start_timeout,
            request_timeout=self.mcp.request_timeout,
            on_state=self._on_link_state,
            tools=self.tools,
            guess_unrelated=guess_unrelated,
        )

    def _on_link_state(self, link: Link, state: str, error: str | None) -> None:
        if self.shared.owns(link) or state == "failed" and not link.sessions:
            self._set_status(state, error)

    def _set_status(self, status: str, error: str | None) -> None:
        previous, self.status = self.status, status
        if status != previous:
            down = status == "failed"
            log = logger.warning if down else logger.info
            log("upstream %r is %s%s", self.id, status, f": {error}" if error else "")
            if self.audit is not None and not self._closing and (down or previous == "failed"):
                event = AuditEvent(
                    "upstream",
                    "upstream.down" if down else "upstream.up",
                    not down,
                    resource=f"mcp:{self.id}",
                    error=error,
                    mcp=self.id,
                    details={"previous": previous, "status": status},
                )
                self.audit.emit_soon(event)
        if error is not None:
            self.last_error = error

    # -- probing -----------------------------------------------------------------------

    async def _probe_until_ready(self) -> None:
        delay, factor, ceiling = PROBE_BACKOFF
        while not self._closing:
            try:
                await self._probe()
            except (UpstreamError, OSError) as exc:
                self._set_status("failed", str(exc) or type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * factor, ceiling)
                continue
            self._set_status("ready", None)
            return

    async def _probe(self) -> None:
        shared = self.mcp.session_mode == "shared"
        link = self._new_link(shared=shared)
        try:
            await link.connect()
            # Every capability a client may declare: upstreams list some tools only to clients that declare one,
            # and the pins' baseline must hold them all (a tool first seen later is new).
            capabilities = PROXY_CLIENT_CAPABILITIES
            result = await link.handshake(_proxy_init_params(capabilities, self.mcp.proto))
            self.server_info = result.get("serverInfo")
            declared = result.get("capabilities")
            self.capabilities = declared if isinstance(declared, dict) else {}
            if "tools" in result.get("capabilities", {}):
                self.tool_count = len(await list_tools(link, self.mcp.request_timeout, self.mcp.tool_filter, self.pins))
        except BaseException:
            await link.aclose()
            raise
        if not (shared and not self.identity.per_principal and self.shared.offer_spare(link)):
            await link.aclose()

    async def _open_shared(self, identity: IdentityHeaders | None = None) -> Link:
        """A new upstream session for one principal's clients, initialized by the proxy."""
        link = self._new_link(shared=True, identity=identity)
        try:
            await link.connect()
            await link.handshake(_proxy_init_params(PROXY_CLIENT_CAPABILITIES, self.mcp.proto))
        except BaseException:
            await link.aclose()
            raise
        return link

    def reprobe(self, error: str) -> None:
        """An isolated session could not reach the upstream: mark it failed and probe again."""
        self._set_status("failed", error)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = self._spawn(self._probe_until_ready(), f"probe-{self.id}")

    # -- sessions ----------------------------------------------------------------------

    def new_session(
        self, principal: str | None, *, client_ip: str | None, legacy_sse: bool = False, who: object = None
    ) -> Session:
        """A session for `principal` (None: no authentication, counted per `client_ip`); `who`: its Principal."""
        shared = self.mcp.session_mode == "shared"
        limit = MAX_SHARED_CLIENTS if shared else self.mcp.max_sessions
        session = Session(self.id, principal, legacy_sse=legacy_sse, session_id=self.sealer.new_id(self.id, principal))
        session.identity = self.identity.headers_for(who)
        holder = self.quota.hold(session, principal, client_ip, self._reclaim)
        if len(self.sessions) >= limit:
            self.quota.release(holder, session.id)
            raise CapacityError(f"MCP {self.id!r} already has {len(self.sessions)} sessions (max_sessions {limit})")
        if shared and not self.shared.has_room(principal):
            self.quota.release(holder, session.id)
            raise CapacityError(
                f"MCP {self.id!r} already has {self.mcp.max_sessions} upstream sessions in use, one per principal "
                "(max_sessions)"
            )
        session.holder = holder
        self.sessions[session.id] = session
        return session

    @property
    def resumable(self) -> bool:
        """Whether another replica can continue this MCP's sessions itself (no process or stream to own)."""
        return self.mcp.session_mode == "shared" or self.mcp.transport == "streamable-http"

    def seal_resumable(self, session: Session) -> None:
        """Give a just-initialized session an id any replica can continue, when the MCP allows it."""
        link = session.link
        if not self.sealer.active or not self.resumable or session.legacy_stream is not None or link is None:
            return
        upstream = None
        if not link.shared and link.channel is not None:
            upstream = link.channel.session_id
        new_id = self.sealer.seal(
            KIND_RESUMABLE,
            mcp=self.id,
            principal=session.principal,
            upstream=upstream,
            version=session.protocol_version,
            capabilities=session.capabilities,
        )
        session.resumable = True
        old, session.id = session.id, new_id
        self.sessions[new_id] = self.sessions.pop(old, session)
        if link.sessions.pop(old, None) is not None:
            link.sessions[new_id] = session
        if session.holder is not None:
            self.quota.rename(session.holder, old, new_id)

    async def resume(
        self, session_id: str, seal: SessionSeal, *, client_ip: str | None, who: object = None
    ) -> Session | None:
        """Continue here a session another replica (or this one, before a restart) opened; None if it cannot be."""
        if seal.kind != KIND_RESUMABLE or seal.mcp != self.id or not self.resumable:
            return None
        if session_id in self.sessions:  # resumed meanwhile by a concurrent request
            return self.get(session_id, seal.principal)
        pending = self._resuming.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Session | None] = asyncio.get_running_loop().create_future()
        self._resuming[session_id] = future
        try:
            session = await self._resume(session_id, seal, client_ip, who)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self._resuming[session_id]
        if not future.done():
            future.set_result(session)
        return session

    async def _resume(self, session_id: str, seal: SessionSeal, client_ip: str | None, who: object) -> Session | None:
        session = self.new_session(seal.principal, client_ip=client_ip, who=who)
        self.sessions.pop(session.id)
        if session.holder is not None:
            self.quota.rename(session.holder, session.id, session_id)
        session.id = session_id
        self.sessions[session_id] = session
        session.capabilities = dict(seal.capabilities)
        session.protocol_version = seal.version
        session.initialized = session.resumable = True
        try:
            if self.mcp.session_mode == "shared":
                opener = functools.partial(self._open_shared, session.identity) if session.identity else None
                link = await self.shared.acquire(session.principal, opener)
            else:
                link = self._new_link(shared=False, identity=session.identity)
                await link.connect()
                link.resume(_proxy_init_params(session.capabilities, seal.version), seal.upstream)
        except (UpstreamError, CapacityError) as exc:
            logger.info("session on %r could not be continued here: %s", self.id, exc)
            await self.close_session(session)
            return None
        link.attach(session)
        return session

    def _reclaim(self, held: Held) -> None:
        """Close one of a principal's idle sessions at once (its slot is free on return) to make room."""
        session = self.sessions.get(held.id)
        if session is None:
            return
        logger.info("idle session on %r closed: its principal opened one more than it may hold", self.id)
        link = self._retire(session, "reclaimed")
        if link is not None:
            self._spawn(self._release_reclaimed(session, link), f"reclaim-{self.id}")

    async def _release_reclaimed(self, session: Session, link: Link) -> None:
        with contextlib.suppress(UpstreamError):
            await self._release_link(session, link, keep_upstream=session.resumable)

    @property
    def start_timeout(self) -> float:
        return self.mcp.start_timeout

    async def initialize(self, session: Session, msg: Message, stream: EventStream, scope: Scope | None = None) -> None:
        """Connect a new session upstream and relay its initialize request (`scope`: the request's, unused here)."""
        session.capabilities = (msg.get("params") or {}).get("capabilities") or {}
        if session.link is not None:
            await session.link.forward_request(session, msg, stream)
            return
        if self.mcp.session_mode == "shared":
            # Never another principal's link: nothing the upstream says for one principal's
            # request can then reach another principal's client (DESIGN §4).
            try:
                opener = functools.partial(self._open_shared, session.identity) if session.identity else None
                link = await self.shared.acquire(session.principal, opener)
            except CapacityError as exc:
                raise UpstreamUnavailable(str(exc)) from exc
            except UpstreamError as exc:
                self.reprobe(str(exc))
                raise
            self._ready_again()
        else:
            link = self._new_link(shared=False, identity=session.identity)
            try:
                await link.connect()
            except UpstreamError as exc:
                self.reprobe(str(exc))
                raise
            self._ready_again()
        link.attach(session)
        await link.forward_request(session, msg, stream)

    def _ready_again(self) -> None:
        """A link just opened: the upstream works again, whatever the last probe said."""
        if self.status != "ready" and self._probe_task is not None and self._probe_task.done():
            self._set_status("ready", None)

    async def stateless(self) -> tuple[Link, Session]:
        """The link for requests outside any session (the 2026-07-28 era, `server/discover`).

        Opened on first use with no initialize handshake, so the upstream answers in its own
        era; a legacy-only upstream refuses and the client falls back to `initialize`. Every
        principal's requests share it, so it declares no client capability (the era forbids the
        upstream to ask the client anyway) and delivers only what the transport relates to a
        request: answers and progress by id, the rest only over Streamable HTTP.
        """
        async with self._stateless_lock:
            if self._stateless is None or self._stateless[0].channel is None or self._stateless[0].channel.closed:
                link = self._new_link(shared=True, guess_unrelated=False)
                await link.connect()
                link.mark_ready()
                holder = Session(self.id, None)
                link.attach(holder)
                self._stateless = (link, holder)
            return self._stateless

    async def control(self) -> Link:
        """The proxy's own initialized upstream session, for the admin API's tool listing and calls."""
        async with self._control_lock:
            link = self._control
            if link is None or link.channel is None or link.channel.closed:
                link = self._new_link(shared=False)
                try:
                    await link.connect()
                    await link.handshake(_proxy_init_params(PROXY_CLIENT_CAPABILITIES, self.mcp.proto))
                except BaseException:
                    await link.aclose()
                    raise
                self._control = link
            return link

    async def discover(self, params: Any) -> Message:
        """The upstream's own answer to `server/discover` (its id is the proxy's).

        A legacy-only upstream answers with an error; that verdict is kept for a while and
        the stateless link closed, so no process lingers for an era the upstream lacks.
        """
        verdict = self._legacy_verdict
        if verdict is not None and time.monotonic() - verdict[0] < ERA_VERDICT_SECONDS:
            return dict(verdict[1])
        link, _holder = await self.stateless()
        response = await link.call("server/discover", params, timeout=self.mcp.request_timeout)
        if "error" in response:
            self._legacy_verdict = (time.monotonic(), response)
            self._stateless = None
            await link.aclose()
        return response

    def get(self, session_id: str, principal: str | None) -> Session | None:
        """The live session with this id, if it belongs to this principal."""
        session = self.sessions.get(session_id)
        if session is None or session.closed or session.principal != principal:
            return None
        session.touch()
        return session

    async def close_session(self, session: Session, *, keep_upstream: bool = False, reason: str = "closed") -> None:
        """End a session here (`keep_upstream`: leave its upstream session to the replicas that may continue it)."""
        link = self._retire(session, reason)
        if link is not None:
            await self._release_link(session, link, keep_upstream=keep_upstream)

    def _retire(self, session: Session, reason: str) -> Link | None:
        """End the session here (its slot freed, its streams ended); the link it used, to release."""
        return session.link if session.end(self.sessions, self.quota, reason) else None

    async def _release_link(self, session: Session, link: Link, *, keep_upstream: bool = False) -> None:
        if link.shared:
            await link.detach(session)  # the link stays for the principal's next client (see expire)
        else:
            await link.aclose(keep_upstream=keep_upstream)

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(sweep_interval(self.idle_timeout))
            for session in expired(self.sessions.values(), self.idle_timeout):
                logger.info("session on %r expired after %.0fs idle", self.id, self.idle_timeout)
                with contextlib.suppress(UpstreamError):
                    await self.close_session(session, keep_upstream=session.resumable, reason="idle")
            with contextlib.suppress(UpstreamError):
                await self.shared.expire()

    # -- reporting ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "transport": self.mcp.transport,
            "status": self.status,
            "last_error": self.last_error,
            "tool_count": self.tool_count,
            "sessions": len(self.sessions),
            "upstream_sessions": self._upstream_sessions(),
            "session_mode": self.mcp.session_mode,
        }

    async def list_tools(self) -> list[dict[str, Any]]:
        return await list_upstream_tools(self)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The upstream's response to `tools/call`, through the control session (the admin API's REST call)."""
        link = await self.control()
        params = {"name": name, "arguments": arguments}
        guard = self.guard
        if guard is not None:
            refusal = guard.check_arguments(params, ADMIN_CALLER, None)
            if refusal is not None:
                return jsonrpc.error_response(None, jsonrpc.INVALID_PARAMS, refusal)
        response = await link.call("tools/call", params, timeout=self.mcp.request_timeout)
        if guard is not None and guard.watches_results:
            guard.check_result(response, name, ADMIN_CALLER, None)
        return response

    def _upstream_sessions(self) -> int:
        if self.mcp.session_mode == "shared":
            return len(self.shared)
        return sum(1 for session in self.sessions.values() if session.link is not None)


async def list_upstream_tools(runtime: McpRuntime) -> list[dict[str, Any]]:
    """Every tool of the upstream that its filter (and its pins) let clients see, through the control session."""
    link = await runtime.control()
    return await list_tools(link, runtime.mcp.request_timeout, runtime.mcp.tool_filter, runtime.pins)
