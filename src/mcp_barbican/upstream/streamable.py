"""Streamable HTTP upstreams, the session shape of MCP 2025-03-26 ... 2025-11-25.

Every message is one POST to the MCP endpoint, sent by the channel's own pooled HTTP/1.1
client (upstream/posting.py: aiohttp's request machinery cost more CPU than the rest of a
proxied call). A request on a kept-alive connection returns from `send()` once written;
anything else (a notification, a response, a request that needs a new connection) returns
once the upstream answered with response headers. The body (a JSON object or an SSE stream)
is relayed by callbacks as it arrives (upstream/answers.py), so any number of requests run
concurrently. Messages from a POST's body reach `on_message(message, request_id)`, the id
being that of the POSTed request; the standalone GET stream (opened once
`notifications/initialized` went through, upstream/getstream.py, on aiohttp) delivers
`on_message(message, None)`.

A request always gets an answer through `on_message`: the upstream's response, or a
synthesized JSON-RPC error (`UPSTREAM_ERROR`) when the upstream answers with an HTTP error,
an unusable body, or a stream that ends without the response and cannot be resumed
(resumption: GET with `Last-Event-ID`, honouring `retry`, a bounded number of attempts).
Exceptions from `send()`: UpstreamUnavailable when the upstream cannot be connected to,
UpstreamClosed when the exchange broke before the answer's head (on a kept-alive connection,
a request gets that as an error answer instead) or the channel is closed. Two cases are left to the
core: a 202 to a request (its answer is expected on the GET stream) and slow answers (the
core times requests out).

HTTP 404 to a request that carried the session id means the upstream session is gone: the
request gets an error, the channel closes, in-flight streams are dropped, and `on_close`
gets `UpstreamClosed("session expired")`. Redirects are never followed: they could carry
the configured headers (credentials) elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, NamedTuple

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamClosed, UpstreamError, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.logs import log_unexpected
from mcp_barbican.tracecontext import OUTGOING
from mcp_barbican.upstream.answers import Answer
from mcp_barbican.upstream.base import (
    CloseHandler,
    IdentityHeaders,
    MessageHandler,
    UpstreamChannel,
    add_trace,
    with_identity,
)
from mcp_barbican.upstream.getstream import GetStreams, describe, upstream_error
from mcp_barbican.upstream.http import (
    CONNECTION_LIMIT,
    MAX_EVENT_BYTES,
    excerpt,
    safe_url,
    session_settings,
)
from mcp_barbican.upstream.posting import Exchange, PostPool, request_head

__all__ = ["StreamableHttpChannel"]

logger = logging.getLogger(__name__)

_SESSION_ID: Final = re.compile(r"[\x21-\x7e]+")
#: How long reading an error body may take.
_EXCERPT_TIMEOUT: Final = 2.0


class _Post(NamedTuple):
    method: str | None
    request_id: RequestId | None
    session_sent: bool


class StreamableHttpChannel(GetStreams, UpstreamChannel):
    """One Streamable HTTP MCP session."""

    #: Bound on the DELETE sent by aclose().
    delete_timeout: float = 2.0
    #: Connections this session's POSTs may hold open at once.
    post_connections: int = CONNECTION_LIMIT

    def __init__(
        self,
        on_message: MessageHandler,
        on_close: CloseHandler,
        *,
        url: str,
        headers: Mapping[str, str],
        http: aiohttp.ClientSession,
        start_timeout: float,
        max_event_bytes: int = MAX_EVENT_BYTES,
        identity: IdentityHeaders | None = None,
    ) -> None:
        super().__init__(on_message, on_close)
        self._url = URL(url)
        self._http = http
        self._identity = identity
        self._start_timeout = start_timeout  # bounds the wait for GET response headers
        self._max_event_bytes = max_event_bytes
        self._base_headers: CIMultiDict[str] = CIMultiDict(headers)
        self._post_key: tuple[str | None, str | None] | None = None
        self._post_headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self._post_prefix: bytes | None = None
        self._pool: PostPool | None = None
        self._answers: set[Answer] = set()
        self._session_id: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._listening = False
        self._closing = False
        self._closed = False
        self._expired = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def session_id(self) -> str | None:
        """The upstream's `Mcp-Session-Id`, once the initialize response carried one."""
        return self._session_id

    def resume(self, session_id: str | None) -> None:
        self._session_id = session_id

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("StreamableHttpChannel.start() called twice")
        if self._url.scheme not in ("http", "https") or not self._url.host:
            self._closed = True
            raise UpstreamUnavailable(f"not an http(s) URL: {safe_url(self._url)}")
        self._started = True

    # -- sending -------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self._closed:
            raise UpstreamClosed("the upstream session is closed")
        if not self._started:
            raise RuntimeError("StreamableHttpChannel.send() before start()")
        if self._http.closed:
            raise UpstreamClosed("the HTTP session is closed")
        method = message.get("method")
        request_id: RequestId | None = message["id"] if method is not None and "id" in message else None
        post = _Post(method, request_id, self._session_id is not None)
        body = jsonrpc.dumps(message)
        data = self._post_head(message, len(body)) + body
        pool = self._posts()
        conn = pool.idle() if request_id is not None else None
        if conn is not None:
            # A request on a kept-alive connection: its answer, an HTTP error included, reaches
            # on_message, so there is no need to wait here for its head.
            conn.begin(data, functools.partial(self._heard, post, data))
            return
        # Otherwise wait for the head: notifications and responses go out in order, and a new
        # connection's failure (TLS refused after the handshake, say) is raised to the caller.
        exchange = await pool.post(data)
        if self._closed:
            exchange.release()
            raise UpstreamClosed("the upstream session closed while sending")
        self._answered(post, exchange)

    def _heard(self, post: _Post, data: bytes, exchange: Exchange | None, failure: str | None, retry: bool) -> None:
        if self._closed:  # aclose() or an expired session dropped the connection
            if exchange is not None:
                exchange.release()
            return
        if exchange is not None:
            self._answered(post, exchange)
        elif retry:
            self._spawn("post", self._post_again, post, data)
        elif post.request_id is not None:
            self._fail_request(post.request_id, self._posts().failed(str(failure)))

    async def _post_again(self, post: _Post, data: bytes) -> None:
        """The request went out on a connection the upstream had just closed: once more on a fresh one."""
        try:
            exchange = await self._posts().post(data)
        except UpstreamError as exc:
            if post.request_id is not None:
                self._fail_request(post.request_id, str(exc))
            return
        self._answered(post, exchange)

    def _fail_request(self, request_id: RequestId, failure: str) -> None:
        logger.info("request to %s failed: %s", safe_url(self._url), failure)
        self._emit(upstream_error(request_id, failure, None), request_id)

    def _answered(self, post: _Post, exchange: Exchange) -> None:
        """The head of a POST's answer arrived."""
        if self._closed:
            exchange.release()
            return
        status = exchange.status
        method, request_id = post.method, post.request_id
        if 200 <= status < 300:
            if method == "initialize" and request_id is not None:
                self._adopt_session(exchange.headers.get("mcp-session-id"))
            if status in (202, 204) or (request_id is None and exchange.content_length == 0):
                exchange.release()
                if request_id is not None:
                    logger.debug("upstream answered a request with HTTP %d; its response should follow on GET", status)
            else:
                answer = Answer(
                    exchange,
                    request_id,
                    deliver=self._deliver,
                    on_done=self._answer_done,
                    max_bytes=self._max_event_bytes,
                    grace=self.stream_end_grace,
                )
                self._answers.add(answer)
                answer.start()
            if method == "notifications/initialized":
                self._start_listening()
        elif status == 404 and post.session_sent:
            exchange.release()
            if request_id is not None:
                self._emit(upstream_error(request_id, "the upstream session expired (HTTP 404)", status), request_id)
            self._session_expired()
        else:
            self._spawn("refusal", self._refused, post, exchange)

    async def _refused(self, post: _Post, exchange: Exchange) -> None:
        """An HTTP error answer: the request gets an error naming the status and the start of the body."""
        text = ""
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXCERPT_TIMEOUT):
                    text = excerpt(await exchange.read(512))
        finally:
            exchange.release()
        status = exchange.status
        detail = f"upstream answered HTTP {status}" + (f": {text}" if text else f" {exchange.reason}".rstrip())
        if post.request_id is not None:
            self._emit(upstream_error(post.request_id, detail, status), post.request_id)
        else:
            logger.warning("%s rejected a %s: %s", safe_url(self._url), post.method or "response", detail)

    def _posts(self) -> PostPool:
        if self._pool is None:
            tls, connect_timeout, resolver = session_settings(self._http)
            label = safe_url(self._url)
            self._pool = PostPool(
                self._url,
                tls,
                label=label,
                connect_timeout=connect_timeout,
                limit=self.post_connections,
                resolver=resolver,
            )
        return self._pool

    def _post_head(self, message: Message, length: int) -> bytes:
        """The request head of one POST: the cached session part, or built anew for per-call headers."""
        cached = self._headers_for_post()
        headers = with_identity(_modern_headers(message, cached), self._identity)
        if headers is cached:
            if self._post_prefix is None:
                self._post_prefix = request_head(self._url, cached)
            prefix = self._post_prefix
        else:
            prefix = request_head(self._url, headers)
        return prefix + b"Content-Length: %d\r\n\r\n" % length

    def _headers_for_post(self) -> CIMultiDictProxy[str]:
        key = (self._session_id, self.protocol_version)
        if key != self._post_key:
            headers = self._session_headers("application/json, text/event-stream")
            headers["Content-Type"] = "application/json"
            self._post_headers = CIMultiDictProxy(headers)
            self._post_key = key
            self._post_prefix = None
        return self._post_headers

    def _session_headers(self, accept: str) -> CIMultiDict[str]:
        headers = self._base_headers.copy()
        headers["Accept"] = accept
        if self._session_id is not None:
            headers["Mcp-Session-Id"] = self._session_id
        if self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def _session_headers_now(self, accept: str) -> CIMultiDict[str]:
        """The session headers with the caller's identity as it is now (GET and DELETE; POSTs merge it per send)."""
        headers = self._session_headers(accept)
        for name, value in (self._identity() if self._identity is not None else {}).items():
            headers[name] = value
        add_trace(headers, OUTGOING.get())
        return headers

    def _adopt_session(self, session_id: str | None) -> None:
        if session_id is None:
            return
        if _SESSION_ID.fullmatch(session_id) is None:
            logger.warning("ignored a malformed Mcp-Session-Id from %s", safe_url(self._url))
            return
        self._session_id = session_id

    # -- reading -------------------------------------------------------------------------------

    def _answer_done(self, answer: Answer) -> None:
        """A POST body ended: make sure its request got an answer."""
        self._answers.discard(answer)
        request_id = answer.request_id
        if request_id is None or answer.answered or self._closed:
            return
        parser = answer.parser
        if parser is not None and parser.last_event_id:
            self._spawn("resume", self._resume_or_fail, request_id, parser, answer.failure)
            return
        logger.info("request to %s failed: %s", safe_url(self._url), answer.failure)
        self._emit(upstream_error(request_id, answer.failure, None), request_id)

    def _deliver(self, data: bytes, related: RequestId | None) -> bool:
        """Parse and hand on one message; True when it is the response to `related`."""
        if not data or data.isspace():
            return False  # e.g. a priming event (an id and empty data)
        try:
            message = jsonrpc.loads(data)
        except ValueError:
            logger.warning("dropped an upstream message that is not JSON (%d bytes)", len(data))
            return False
        # Decide before emitting: the handler owns the message and may rewrite its id.
        if isinstance(message, dict):
            answers = _answers(message, related)
            self._emit(message, related)
            return answers
        if isinstance(message, list):  # a JSON-RPC batch (2025-03-26 servers)
            answered = False
            for item in message:
                if isinstance(item, dict):
                    answered = _answers(item, related) or answered
                    self._emit(item, related)
            return answered
        logger.warning("dropped an upstream message that is not a JSON-RPC object")
        return False

    def _emit(self, message: Message, related: RequestId | None) -> None:
        if self._closed:
            return
        try:
            self.on_message(message, related)
        except Exception:
            log_unexpected(logger, "on_message handler failed")

    # -- lifecycle -----------------------------------------------------------------------------

    def _spawn(self, name: str, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> asyncio.Task[None]:
        # the coroutine is created inside the task: a task cancelled before its first step
        # then leaves no never-awaited coroutine behind
        task = asyncio.create_task(_guard(func, *args), name=f"mcp-barbican-streamable-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _session_expired(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._expired = True
        logger.warning("the upstream session at %s expired (HTTP 404)", safe_url(self._url))
        self._drop_posts()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        try:
            self.on_close(UpstreamClosed("session expired"))
        except Exception:
            log_unexpected(logger, "on_close handler failed")

    def _drop_posts(self) -> None:
        for answer in list(self._answers):
            answer.cancel()
        self._answers.clear()
        if self._pool is not None:
            self._pool.close()

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._closed = True
        self._drop_posts()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.delete_timeout)
        if self._session_id is None or self._expired or self.keep_session or self._http.closed:
            return
        try:
            async with asyncio.timeout(self.delete_timeout):
                async with self._http.delete(
                    self._url, headers=self._session_headers_now("application/json"), allow_redirects=False
                ) as resp:
                    logger.debug("DELETE of the upstream session answered HTTP %d", resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("DELETE of the upstream session failed: %s", describe(exc))


async def _guard(func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    try:
        await func(*args)
    except asyncio.CancelledError:
        raise
    except Exception:
        log_unexpected(logger, "an upstream stream task failed")


_NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
MODERN_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"


def _header_value(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def _modern_headers(message: Message, headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """2026-07-28 requests carry their version, method and name as headers too (spec: REQUIRED)."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get(MODERN_VERSION_KEY), str):
        return headers
    modern = CIMultiDict(headers)
    modern["MCP-Protocol-Version"] = meta[MODERN_VERSION_KEY]
    method = message.get("method")
    if isinstance(method, str):
        modern["Mcp-Method"] = method
        name = params.get(_NAMED_METHODS.get(method, ""))  # type: ignore[union-attr]
        if isinstance(name, str):
            modern["Mcp-Name"] = _header_value(name)
    return CIMultiDictProxy(modern)


def _answers(message: Message, related: RequestId | None) -> bool:
    return related is not None and "method" not in message and message.get("id") == related
