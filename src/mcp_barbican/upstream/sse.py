"""Legacy HTTP+SSE upstreams (MCP 2024-11-05): one GET event stream plus a POST endpoint.

`start()` opens the GET stream and waits for the `endpoint` event; its URI is resolved
against the SSE URL and must stay on the same origin (scheme, host and port), or the
channel refuses it: an upstream must not steer the proxy, and the configured headers (which
may carry credentials), to another host. Every later `message` event is parsed and handed
to `on_message(message, None)`. `send()` POSTs one message to the endpoint; a non-2xx answer
to a request becomes a synthesized JSON-RPC error response, so the caller always gets an
answer. Redirects are never followed. When the GET stream ends, the channel is closed and
`on_close` is called once (not after `aclose()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from mcp_barbican import jsonrpc
from mcp_barbican.exceptions import UpstreamClosed, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_barbican.jsonrpc import Message
from mcp_barbican.logs import log_unexpected
from mcp_barbican.upstream.base import CloseHandler, IdentityHeaders, MessageHandler, UpstreamChannel, with_identity
from mcp_barbican.upstream.http import (
    MAX_EVENT_BYTES,
    SseError,
    SseEvent,
    SseParser,
    body_excerpt,
    read_limited,
    safe_url,
)

__all__ = ["SseChannel"]

logger = logging.getLogger(__name__)

#: Largest acknowledgement body read from a POST before the connection is dropped instead.
_MAX_ACK_BYTES: Final = 64 * 1024
#: How long reading an error body may take.
_EXCERPT_TIMEOUT: Final = 2.0
#: How long aclose() waits for the reader task to unwind.
_CLOSE_GRACE: Final = 2.0


class SseChannel(UpstreamChannel):
    """One legacy HTTP+SSE MCP session."""

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
        self._identity = identity
        self._url = URL(url)
        self._http = http
        self._start_timeout = start_timeout
        self._max_event_bytes = max_event_bytes
        base: CIMultiDict[str] = CIMultiDict(headers)
        get_headers = base.copy()
        get_headers["Accept"] = "text/event-stream"
        get_headers["Cache-Control"] = "no-cache"
        self._get_headers = CIMultiDictProxy(get_headers)
        post_headers = base.copy()
        post_headers["Content-Type"] = "application/json"
        post_headers["Accept"] = "application/json, text/event-stream"
        self._post_headers = CIMultiDictProxy(post_headers)
        self._endpoint: URL | None = None
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def endpoint(self) -> URL | None:
        """The POST endpoint the upstream announced (None before start() succeeds)."""
        return self._endpoint

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("SseChannel.start() called twice")
        if self._url.scheme not in ("http", "https") or not self._url.host:
            self._closed = True
            raise UpstreamUnavailable(f"not an http(s) URL: {safe_url(self._url)}")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready = ready
        self._task = asyncio.create_task(self._run(), name="mcp-barbican-sse-stream")
        try:
            await asyncio.wait_for(ready, self._start_timeout)
        except TimeoutError:
            await self._abort()
            raise UpstreamTimeout(
                f"no endpoint event from {safe_url(self._url)} within {self._start_timeout:g}s"
            ) from None
        except BaseException:
            await self._abort()
            raise

    async def _abort(self) -> None:
        """Undo a failed start: stop the reader without calling on_close."""
        self._closing = True
        self._closed = True
        await self._stop_task()

    async def send(self, message: Message) -> None:
        endpoint = self._endpoint
        if self._closed or endpoint is None:
            raise UpstreamClosed("the SSE upstream is not connected")
        if self._http.closed:
            raise UpstreamClosed("the HTTP session is closed")
        body = jsonrpc.dumps(message)
        try:
            async with self._http.post(
                endpoint, data=body, headers=with_identity(self._post_headers, self._identity), allow_redirects=False
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    await _drain(resp)
                    return
                excerpt = ""
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_EXCERPT_TIMEOUT):
                        excerpt = await body_excerpt(resp)
                excerpt = excerpt or resp.reason or ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamClosed(f"POST to {safe_url(endpoint)} failed: {_describe(exc)}") from exc
        detail = f"upstream answered HTTP {status}: {excerpt}" if excerpt else f"upstream answered HTTP {status}"
        if jsonrpc.is_request(message):
            self._emit(jsonrpc.error_response(message["id"], jsonrpc.UPSTREAM_ERROR, detail, {"httpStatus": status}))
        else:
            logger.warning("%s rejected a %s: %s", safe_url(endpoint), _kind(message), detail)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._closed = True
        await self._stop_task()

    async def _stop_task(self) -> None:
        task = self._task
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=_CLOSE_GRACE)

    # -- the GET stream ----------------------------------------------------------------------

    async def _run(self) -> None:
        error: BaseException | None = None
        try:
            error = await self._read_stream()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let the task die with an unretrieved exception
            log_unexpected(logger, "SSE reader for %s failed", safe_url(self._url))
            error = UpstreamClosed(f"SSE reader failed: {exc}")
        ready = self._ready
        if ready is not None and not ready.done():
            if not isinstance(error, UpstreamError):
                error = UpstreamUnavailable(f"{safe_url(self._url)}: {error}")
            elif not isinstance(error, UpstreamUnavailable):
                error = UpstreamUnavailable(str(error))
            ready.set_exception(error)
            return
        if self._closing:
            return
        self._closed = True
        logger.warning("SSE upstream %s: %s", safe_url(self._url), error)
        try:
            self.on_close(error)
        except Exception:
            log_unexpected(logger, "on_close handler failed")

    async def _read_stream(self) -> UpstreamError:
        """Run the GET stream; return the error that ended it."""
        try:
            resp = await self._http.get(
                self._url, headers=with_identity(self._get_headers, self._identity), allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return UpstreamUnavailable(f"cannot reach {safe_url(self._url)}: {_describe(exc)}")
        async with resp:
            if resp.status != 200:
                excerpt = await body_excerpt(resp)
                reason = f"{resp.status} {resp.reason or ''}".strip()
                return UpstreamUnavailable(
                    f"{safe_url(self._url)} answered HTTP {reason}" + (f": {excerpt}" if excerpt else "")
                )
            if resp.content_type != "text/event-stream":
                return UpstreamUnavailable(f"{safe_url(self._url)} answered {resp.content_type!r}, not an event stream")
            parser = SseParser(self._max_event_bytes)
            try:
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        self._on_event(event)
            except (aiohttp.ClientError, TimeoutError, SseError) as exc:
                return UpstreamClosed(f"the SSE stream failed: {_describe(exc)}")
            except UpstreamError as exc:  # a refused endpoint
                return exc
        if self._endpoint is None:
            return UpstreamUnavailable(f"{safe_url(self._url)} ended the stream before sending an endpoint")
        return UpstreamClosed("the upstream closed the SSE stream")

    def _on_event(self, event: SseEvent) -> None:
        if event.event == "message":
            if not event.data.strip():
                return
            try:
                message = jsonrpc.loads(event.data)
            except ValueError:
                logger.warning("dropped an SSE message event that is not JSON (%d bytes)", len(event.data))
                return
            if isinstance(message, dict):
                self._emit(message)
            elif isinstance(message, list):  # a JSON-RPC batch (2025-03-26 servers)
                for item in message:
                    if isinstance(item, dict):
                        self._emit(item)
            else:
                logger.warning("dropped an SSE message event that is not a JSON-RPC object")
        elif event.event == "endpoint":
            if self._endpoint is not None:
                logger.warning("ignored a second endpoint event from %s", safe_url(self._url))
                return
            self._endpoint = self._resolve_endpoint(event.data)
            ready = self._ready
            if ready is not None and not ready.done():
                ready.set_result(None)
        else:
            logger.debug("ignored an SSE event of type %r", event.event)

    def _resolve_endpoint(self, data: bytes) -> URL:
        text = data.decode("utf-8", "replace").strip()
        try:
            target = self._url.join(URL(text, encoded=True))
            same_origin = target.absolute and target.origin() == self._url.origin()
        except ValueError:
            same_origin = False
        if not text or not same_origin:
            raise UpstreamUnavailable(f"{safe_url(self._url)} announced a POST endpoint on another origin; refused")
        return target

    def _emit(self, message: Message) -> None:
        try:
            self.on_message(message, None)
        except Exception:
            log_unexpected(logger, "on_message handler failed")


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a small acknowledgement body so the connection goes back to the pool."""
    try:
        await read_limited(resp, _MAX_ACK_BYTES)
    except (SseError, aiohttp.ClientError, TimeoutError):
        resp.close()  # too big or broken: drop the connection rather than reuse it


def _kind(message: Message) -> str:
    return "notification" if jsonrpc.is_notification(message) else "response"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
