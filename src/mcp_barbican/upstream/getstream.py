"""The GET side of a Streamable HTTP session: the standalone stream and resumption (aiohttp).

`GetStreams` is a mixin of StreamableHttpChannel (upstream/streamable.py), which provides the
attributes and the message hand-off declared here. The GET stream opens once
`notifications/initialized` went through and reconnects with `Last-Event-ID`, honouring
`retry`, until it stops delivering; a POST stream that ended without its response is resumed
the same way. HTTP 404 to a GET that carried the session id means the session expired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from mcp_barbican import jsonrpc
from mcp_barbican.jsonrpc import Message, RequestId
from mcp_barbican.logs import log_unexpected
from mcp_barbican.upstream.http import SseError, SseParser, safe_url

__all__ = ["GetStreams", "describe", "upstream_error"]

logger = logging.getLogger(__name__)

#: GET answers worth retrying; any other error status ends the attempt for good.
_RETRYABLE: Final = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class GetStreams:
    """The standalone GET stream and the resumption of POST streams."""

    #: Delay before the first reconnect when the server gave no `retry`; doubles per failure.
    reconnect_delay: float = 1.0
    #: Cap on the computed backoff delay.
    max_reconnect_delay: float = 30.0
    #: Cap on a server-sent `retry` (the spec says to respect it; we still bound it).
    max_retry_delay: float = 60.0
    #: Consecutive reconnects that deliver nothing before giving up on a stream.
    max_reconnect_attempts: int = 5
    #: After a stream carried its response, how long the server gets to end the stream.
    stream_end_grace: float = 1.0

    # provided by the channel
    _http: aiohttp.ClientSession
    _url: URL
    _closed: bool
    _listening: bool
    _session_id: str | None
    _start_timeout: float
    _max_event_bytes: int

    def _deliver(self, data: bytes, related: RequestId | None) -> bool:
        raise NotImplementedError

    def _emit(self, message: Message, related: RequestId | None) -> None:
        raise NotImplementedError

    def _session_expired(self) -> None:
        raise NotImplementedError

    def _session_headers_now(self, accept: str) -> CIMultiDict[str]:
        raise NotImplementedError

    def _spawn(self, name: str, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> asyncio.Task[None]:
        raise NotImplementedError

    async def _resume_or_fail(self, request_id: RequestId, parser: SseParser, failure: str) -> None:
        assert parser.last_event_id is not None
        try:
            if await self._resume(request_id, parser.last_event_id, parser.retry):
                return
        except Exception as exc:
            log_unexpected(logger, "resuming a response stream failed")
            failure += f"; resuming it failed: {describe(exc)}"
        else:
            failure += "; resuming it failed"
        logger.info("request to %s failed: %s", safe_url(self._url), failure)
        self._emit(upstream_error(request_id, failure, None), request_id)

    async def _pump(self, resp: aiohttp.ClientResponse, parser: SseParser, related: RequestId | None) -> bool:
        """Relay an SSE body; True once the response to `related` went by.

        After the response the server should end the stream; it gets `stream_end_grace`
        seconds to do so before the connection is dropped.
        """
        answered = False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        if event.event == "message" and self._deliver(event.data, related) and not answered:
                            answered = True
                            deadline.reschedule(loop.time() + self.stream_end_grace)
        except TimeoutError:
            if not (answered and deadline.expired()):
                raise
        return answered

    async def _open_get(self, last_event_id: str | None) -> aiohttp.ClientResponse:
        headers = self._session_headers_now("text/event-stream")
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        async with asyncio.timeout(self._start_timeout):
            return await self._http.get(self._url, headers=headers, allow_redirects=False)

    def _delay(self, retry: int | None, failures: int) -> float:
        if retry is not None:
            return min(retry / 1000, self.max_retry_delay)
        return min(self.reconnect_delay * float(2 ** max(failures - 1, 0)), self.max_reconnect_delay)

    async def _resume(self, request_id: RequestId, last_event_id: str, retry: int | None) -> bool:
        """Resume a POST stream with GET + Last-Event-ID until its response arrives.

        True when the request got its answer (or the session expired and it got an error).
        """
        failures = 0
        while not self._closed:
            await asyncio.sleep(self._delay(retry, failures))
            progress = False
            try:
                resp = await self._open_get(last_event_id)
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.info("resuming a response stream from %s failed: %s", safe_url(self._url), describe(exc))
            else:
                status = resp.status
                if status == 200 and resp.content_type == "text/event-stream":
                    parser = SseParser(self._max_event_bytes)
                    try:
                        if await self._pump(resp, parser, request_id):
                            return True
                    except (aiohttp.ClientError, TimeoutError, SseError) as exc:
                        logger.info("a resumed response stream failed: %s", describe(exc))
                    finally:
                        resp.release()
                    progress = parser.dispatched > 0
                    last_event_id = parser.last_event_id or last_event_id
                    retry = parser.retry if parser.retry is not None else retry
                else:
                    resp.release()
                    if status == 404 and self._session_id is not None:
                        self._emit(
                            upstream_error(request_id, "the upstream session expired (HTTP 404)", status), request_id
                        )
                        self._session_expired()
                        return True
                    if status not in _RETRYABLE:
                        logger.info("upstream refused to resume a response stream (HTTP %d)", status)
                        return False
            failures = 0 if progress else failures + 1
            if failures >= self.max_reconnect_attempts:
                return False
        return False

    def _start_listening(self) -> None:
        if not self._listening and not self._closed:
            self._listening = True
            self._spawn("get", self._listen)

    async def _listen(self) -> None:
        """Keep the standalone GET stream open: server requests and notifications."""
        last_event_id: str | None = None
        retry: int | None = None
        failures = 0
        while not self._closed:
            progress = False
            try:
                resp = await self._open_get(last_event_id)
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.info("GET stream to %s failed: %s", safe_url(self._url), describe(exc))
            else:
                status = resp.status
                if status == 200 and resp.content_type == "text/event-stream":
                    parser = SseParser(self._max_event_bytes)
                    try:
                        await self._pump(resp, parser, None)
                        logger.debug("the upstream ended the GET stream")
                    except (aiohttp.ClientError, TimeoutError, SseError) as exc:
                        logger.info("GET stream from %s broke: %s", safe_url(self._url), describe(exc))
                    finally:
                        resp.release()
                    progress = parser.dispatched > 0
                    last_event_id = parser.last_event_id or last_event_id
                    retry = parser.retry if parser.retry is not None else retry
                else:
                    content_type = resp.content_type
                    resp.release()
                    if status == 405:
                        logger.debug("the upstream offers no GET stream (HTTP 405)")
                        return
                    if status == 404 and self._session_id is not None:
                        self._session_expired()
                        return
                    if status not in _RETRYABLE:
                        logger.info(
                            "the upstream refused the GET stream (HTTP %d, %s); continuing without it",
                            status,
                            content_type,
                        )
                        return
            failures = 0 if progress else failures + 1
            if failures >= self.max_reconnect_attempts:
                logger.warning("gave up on the GET stream to %s after %d attempts", safe_url(self._url), failures)
                return
            await asyncio.sleep(self._delay(retry, failures))


def upstream_error(request_id: RequestId, message: str, status: int | None) -> Message:
    return jsonrpc.error_response(
        request_id, jsonrpc.UPSTREAM_ERROR, message, {"httpStatus": status} if status is not None else None
    )


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
