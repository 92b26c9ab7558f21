"""Requests for a session another replica owns, passed to that replica over Redis, and its answer back.

A stdio child, a legacy SSE stream and an aggregated session live in one process. When a request for
such a session (its sealed id names its owner, server/seal.py) lands on another replica, that replica
reads the body and publishes the request on the owner's channel; the owner serves it as if its client
had come to it (its own bans, authentication, limits, audit: each request is decided exactly once, by
the owner) and publishes the answer's parts back on the forwarder's channel, streamed, not buffered.

Every message is signed with a key derived from the session keys, carries the time it was sent and is
refused when stale, so only a replica holding the keys can ask another to serve. A forwarder whose
client leaves tells the owner, which then ends the request as a disconnect; an owner that finds nobody
listening on the forwarder's channel does the same. An owner gone (no subscriber) makes a 404
`Session not found`, as the spec wants for a session that no longer exists.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from redis.exceptions import RedisError

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import CLIENT_IP_KEY, BodyTooLarge, read_body, rpc_error, stopping_event, wait_disconnect
from mcp_barbican.logs import log_unexpected
from mcp_barbican.server.seal import Sealer
from mcp_barbican.storage.redis import command_client, listening_client
from mcp_barbican.types import Message, Receive, Scope, Send

__all__ = ["Tunnel"]

logger = logging.getLogger(__name__)

#: How long a forwarder waits for the owner to start answering.
ANSWER_START_SECONDS: Final = 30.0
#: A request older than this when it arrives is refused (a replayed or long-delayed message).
MAX_AGE_SECONDS: Final = 30.0
#: Answer parts a forwarder holds for a client that reads slowly; past it the answer is cut.
MAX_QUEUED_PARTS: Final = 1024
#: Requests an owner serves for other replicas at once.
MAX_SERVED: Final = 10_000
RETRY_SECONDS: Final = 1.0
#: Request headers not passed on: they describe the forwarder's own connection.
_HOP_HEADERS: Final = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade"})
_CLOSED: Final = object()
#: Put on a forwarded GET stream's queue when the server begins a graceful stop.
_STOPPING: Final = object()

ServeApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scope_part(scope: Scope) -> dict[str, Any]:
    headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"] if n not in _HOP_HEADERS]
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls") if isinstance(extensions, dict) else None
    return {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope.get("query_string", b"").decode("latin-1"),
        "root": scope.get("root_path", ""),
        "scheme": scope.get("scheme", "http"),
        "headers": headers,
        "client": list(scope["client"]) if scope.get("client") else None,
        "server": list(scope["server"]) if scope.get("server") else None,
        "ip": scope.get(CLIENT_IP_KEY),
        "cert": list(tls.get("client_cert_chain") or []) if isinstance(tls, dict) else [],
    }


def _rebuilt_scope(part: dict[str, Any]) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": part["method"],
        "scheme": part["scheme"],
        "path": part["path"],
        "raw_path": part["path"].encode("latin-1"),
        "query_string": part["query"].encode("latin-1"),
        "root_path": part["root"],
        "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in part["headers"]],
        "client": tuple(part["client"]) if part["client"] else None,
        "server": tuple(part["server"]) if part["server"] else None,
        CLIENT_IP_KEY: part["ip"],
    }
    if part["cert"]:
        scope["extensions"] = {"tls": {"client_cert_chain": part["cert"]}}
    return scope


class Tunnel:
    """This replica's channel: requests it forwards to owners, and requests it serves for other replicas."""

    def __init__(self, url: str, *, key_prefix: str, sealer: Sealer, serve: Callable[[], ServeApp]) -> None:
        self._redis = command_client(url)
        self._listening_client = listening_client(url)
        self._prefix = key_prefix + "tunnel:"
        self._sealer = sealer
        self._serve = serve
        #: ticket -> the answer parts of a request this replica forwarded
        self._waiting: dict[str, asyncio.Queue[Any]] = {}
        #: ticket -> set when the forwarder's client left, for requests this replica serves
        self._served: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        #: Whether this replica hears its channel now: without it no answer can come back.
        self._hearing = False
        #: Requests passed to their session's owner, and requests served here for another replica.
        self.forwarded = 0
        self.served = 0

    @property
    def replica(self) -> str:
        return self._sealer.replica

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="tunnel-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5.0)

    async def aclose(self) -> None:
        for task in [self._listener, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._listener, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._redis.aclose()
        await self._listening_client.aclose()

    # -- sending -----------------------------------------------------------------------

    async def _publish(self, replica: str, message: dict[str, Any]) -> int | None:
        """Receivers of `message` on `replica`'s channel (0: nobody listens there; None: it could not be sent)."""
        if not self._sealer.active:  # the keys were taken away by a reload
            return None
        data = self._sealer.sign(json.dumps(message, separators=(",", ":")).encode())
        try:
            receivers: int = await self._redis.publish(self._prefix + replica, data)
        except (RedisError, OSError) as exc:
            logger.warning("session tunnel: cannot publish to replica %s: %s", replica, exc)
            return None
        return receivers

    # -- the forwarder's side ----------------------------------------------------------

    async def forward(self, scope: Scope, receive: Receive, send: Send, owner: str, body_limit: int) -> None:
        """Have `owner` serve this request and relay its answer."""
        try:
            body = await read_body(scope, receive, body_limit)
        except BodyTooLarge:
            await rpc_error(send, 413, jsonrpc.INVALID_REQUEST, f"request body is over the limit of {body_limit} bytes")
            return
        if not self._hearing:
            await self._unreachable(send)
            return
        ticket = secrets.token_hex(12)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting[ticket] = queue
        request = {"k": "req", "t": ticket, "f": self.replica, "ts": time.time(), "s": _scope_part(scope)}
        request["b"] = _b64(body)
        finished = False
        watcher = asyncio.create_task(self._watch_client(receive, queue), name="tunnel-client")
        # A GET stream has no end of its own: a graceful stop ends it here (and at the owner) rather than wait.
        stopping = stopping_event(scope) if scope["method"] == "GET" else None
        stopper = None if stopping is None else asyncio.create_task(_put_when_set(stopping, queue, _STOPPING))
        try:
            receivers = await self._publish(owner, request)
            self.forwarded += 1
            if not receivers:
                if receivers == 0:  # nobody listens for the owner: it is gone, and its sessions with it
                    await rpc_error(send, 404, jsonrpc.INVALID_REQUEST, "Session not found")
                else:
                    await self._unreachable(send)
                finished = True
                return
            finished = await self._relay(queue, send)
        finally:
            watcher.cancel()
            if stopper is not None:
                stopper.cancel()
            self._waiting.pop(ticket, None)
            if not finished:
                await self._publish(owner, {"k": "end", "t": ticket})

    @staticmethod
    async def _unreachable(send: Send) -> None:
        message = "the replica holding this session cannot be reached now (Redis)"
        await rpc_error(send, 503, jsonrpc.UPSTREAM_ERROR, message, None, [(b"retry-after", b"1")])

    @staticmethod
    async def _watch_client(receive: Receive, queue: asyncio.Queue[Any]) -> None:
        await wait_disconnect(receive)
        queue.put_nowait(_CLOSED)

    async def _relay(self, queue: asyncio.Queue[Any], send: Send) -> bool:
        """Send the owner's answer parts on; True once the whole answer went out."""
        started = False
        while True:
            try:
                part = await (queue.get() if started else asyncio.wait_for(queue.get(), ANSWER_START_SECONDS))
            except TimeoutError:
                await rpc_error(send, 504, jsonrpc.UPSTREAM_ERROR, "the replica holding this session did not answer")
                return False
            if part is _STOPPING:
                if started:
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await self._unreachable(send)
                return False
            if part is _CLOSED:
                if not started:
                    await rpc_error(send, 502, jsonrpc.UPSTREAM_ERROR, "the replica holding this session went away")
                return False
            if part["k"] == "start":
                started = True
                headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in part["h"]]
                await send({"type": "http.response.start", "status": part["st"], "headers": headers})
            elif part["k"] == "body" and started:
                more = bool(part["m"])
                await send({"type": "http.response.body", "body": base64.b64decode(part["d"]), "more_body": more})
                if not more:
                    return True

    def _answer_part(self, message: dict[str, Any]) -> None:
        if message["k"] == "end":  # either side's: a client left, or an owner gave up
            ended = self._served.get(message["t"])
            if ended is not None:
                ended.set()
        queue = self._waiting.get(message["t"])
        if queue is None:
            return
        if message["k"] == "end":
            queue.put_nowait(_CLOSED)
        elif queue.qsize() >= MAX_QUEUED_PARTS:
            logger.warning("session tunnel: a client reads too slowly; its answer was cut")
            del self._waiting[message["t"]]
            queue.put_nowait(_CLOSED)
        else:
            queue.put_nowait(message)

    # -- the owner's side --------------------------------------------------------------

    def _accept(self, message: dict[str, Any]) -> None:
        ticket, forwarder = message["t"], message["f"]
        if abs(time.time() - float(message["ts"])) > MAX_AGE_SECONDS or ticket in self._served:
            logger.warning("session tunnel: refused a stale or repeated request from replica %s", forwarder)
            return
        if len(self._served) >= MAX_SERVED:
            logger.warning("session tunnel: %d requests served for other replicas already; one refused", MAX_SERVED)
            return
        ended = self._served[ticket] = asyncio.Event()
        self.served += 1
        task = asyncio.create_task(self._serve_one(message, ended), name="tunnel-serve")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_one(self, message: dict[str, Any], ended: asyncio.Event) -> None:
        ticket, forwarder = message["t"], message["f"]
        body = base64.b64decode(message["b"])
        delivered = False
        complete = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await ended.wait()
            return {"type": "http.disconnect"}

        async def send(out: Message) -> None:
            nonlocal complete
            if ended.is_set():
                return
            if out["type"] == "http.response.start":
                headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in out.get("headers", ())]
                part = {"k": "start", "t": ticket, "st": out["status"], "h": headers}
            elif out["type"] == "http.response.body":
                more = bool(out.get("more_body"))
                complete = not more
                part = {"k": "body", "t": ticket, "d": _b64(out.get("body", b"")), "m": more}
            else:
                return
            if not await self._publish(forwarder, part):
                ended.set()  # the forwarder is gone (its client with it), or cannot be told

        try:
            await self._serve()(_rebuilt_scope(message["s"]), receive, send)
        except Exception:
            log_unexpected(logger, "session tunnel: serving a request for replica %s failed", forwarder)
        finally:
            self._served.pop(ticket, None)
            if not complete and not ended.is_set():
                await self._publish(forwarder, {"k": "end", "t": ticket})

    # -- listening ---------------------------------------------------------------------

    async def _listen(self) -> None:
        channel = self._prefix + self.replica
        failing = False
        while True:
            try:
                async with self._listening_client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(channel)
                    self._hearing = True
                    self._subscribed.set()
                    if failing:
                        failing = False
                        logger.warning("session tunnel: listening on Redis again")
                    async for raw in pubsub.listen():
                        if raw.get("type") == "message":
                            self._heard(raw["data"])
            except (RedisError, OSError) as exc:
                if not failing:
                    failing = True
                    logger.warning("session tunnel: lost its Redis channel (%s); retrying", exc)
            except Exception:
                log_unexpected(logger, "session tunnel: the listener failed; retrying")
            self._deaf()
            await asyncio.sleep(RETRY_SECONDS)

    def _deaf(self) -> None:
        """The channel is lost: answers on their way may be lost with it, so the requests waiting for them end."""
        self._hearing = False
        for queue in self._waiting.values():
            queue.put_nowait(_CLOSED)
        for ended in self._served.values():
            ended.set()

    def _heard(self, data: bytes) -> None:
        plain = self._sealer.verify(data)
        if plain is None:
            logger.warning("session tunnel: ignored a message no session key signed")
            return
        try:
            message = json.loads(plain)
            if message["k"] == "req":
                self._accept(message)
            else:
                self._answer_part(message)
        except (ValueError, KeyError, TypeError):
            logger.warning("session tunnel: ignored a malformed message")


async def _put_when_set(event: asyncio.Event, queue: asyncio.Queue[Any], item: object) -> None:
    await event.wait()
    queue.put_nowait(item)
