"""The access log: one INFO line per request on the `mcp_barbican.access` logger.

Fields: method, route (a template such as `/mcp/{id}`, never a query string), status, MCP id,
principal id (never a credential), duration in ms, response body bytes, client address. A
long-lived stream (an SSE GET) is logged when it ends, so its duration is the stream's. The
line is written after the response, and a failure to write it is dropped: logging never
fails a request.

Under the command line (`install_writer`), lines skip Python's logging: a LogRecord, a formatter
and a write plus flush per line cost about 40 µs of CPU per request in the proxy (measured with
bench/cpu_per_call.py), a quarter of a proxied call. `AccessWriter` renders the same line the
command line's handler would (text or JSON) and writes what gathered at most every
`FLUSH_EVERY` seconds, like nginx's buffered `access_log`; shutdown and exit write the rest.
The logger's level still decides (`--log-level WARNING` silences it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.logs import Fields, json_line
from mcp_barbican.security.oauth import WELL_KNOWN_PATH
from mcp_barbican.security.principal import principal_id
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog", "AccessWriter", "access_fields", "access_logger", "flush_writer", "install_writer", "route_of"]

_NAME: Final = "mcp_barbican.access"
access_logger = logging.getLogger(_NAME)

_MCP: Final = "/mcp/"
_MCP_ROUTES: Final = {"": "/mcp/{id}", "sse": "/mcp/{id}/sse", "messages": "/mcp/{id}/messages"}
_PRM: Final = f"{WELL_KNOWN_PATH}/mcp/"
_FIXED: Final = frozenset(
    {"/mcp", "/sse", "/messages", "/healthz", "/readyz", "/metrics", "/api/v1/mcp/list", f"{WELL_KNOWN_PATH}/mcp"}
)
#: The longest MCP id a line carries (a config id is at most 64; a request may name anything).
_MAX_ID: Final = 64


def route_of(path: str) -> tuple[str, str | None]:
    """The route template of `path` and the MCP id it names (None: none). Templates form a small fixed set."""
    if path.startswith(_MCP):
        mcp_id, _, rest = path[len(_MCP) :].partition("/")
        return _MCP_ROUTES.get(rest, "/mcp/{id}/{other}"), mcp_id[:_MAX_ID] or None
    if path in _FIXED:
        return path, None
    if path.startswith(_PRM):
        return f"{_PRM}{{id}}", path[len(_PRM) :][:_MAX_ID] or None
    if path == "/admin" or path.startswith("/admin/"):
        return "/admin/*", None
    return "/{other}", None


def access_fields(scope: Scope, status: int, elapsed: float, size: int) -> dict[str, object]:
    """The fields of one access line (`elapsed` in seconds, `size` the response body's bytes)."""
    route, mcp_id = route_of(scope["path"])
    return {
        "method": scope["method"],
        "route": route,
        "status": status,
        "mcp": mcp_id,
        "principal": principal_id(scope),
        "duration_ms": round(elapsed * 1000, 3),
        "bytes": size,
        "client": scope.get(CLIENT_IP_KEY),
    }


class AccessLog:
    """Outermost layer: times each HTTP request and logs it once it is answered (status 0: never answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = size = 0

        async def observed(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            # The request is answered: its log line must not break it.
            with contextlib.suppress(Exception):
                if access_logger.isEnabledFor(logging.INFO):
                    fields = access_fields(scope, status, time.perf_counter() - started, size)
                    if _writer is not None:
                        _writer.write(fields)
                    else:
                        # handle() a record made here: Logger.info would walk the stack for a caller nobody shows.
                        message = Fields("request", fields)
                        record = access_logger.makeRecord(_NAME, logging.INFO, __file__, 0, message, (), None)
                        access_logger.handle(record)


#: At most this long between a line and its write; past FLUSH_BYTES gathered, at once.
FLUSH_EVERY: Final = 0.1
FLUSH_BYTES: Final = 64 * 1024


class AccessWriter:
    """Access lines rendered as the command line's handler would, written in batches to `stream`."""

    def __init__(self, stream: TextIO, *, json: bool = False, worker: int | None = None) -> None:
        self.stream = stream
        self.json = json
        self.worker = worker
        self._prefix = f"INFO worker={worker} {_NAME}: " if worker is not None else f"INFO {_NAME}: "
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def write(self, fields: dict[str, object]) -> None:
        line = self._render(fields, time.time())
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
            except RuntimeError:  # no loop: nothing would come back to write it later
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text, self._lines, self._size = "".join(self._lines), [], 0
        with contextlib.suppress(Exception):  # a closed or broken stream loses lines, never a request
            self.stream.write(text)
            self.stream.flush()

    def _render(self, fields: dict[str, object], now: float) -> str:
        whole = int(now)
        if whole != self._second:
            self._second = whole
            self._stamp = (
                datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                if self.json
                else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole))
            )
        millis = int((now - whole) * 1000)
        if not self.json:
            return f"{self._stamp},{millis:03d} {self._prefix}{Fields('request', fields)}\n"
        payload = json_line(f"{self._stamp}.{millis:03d}+00:00", "INFO", _NAME, Fields("request", fields), self.worker)
        return orjson.dumps(payload).decode() + "\n"


_writer: AccessWriter | None = None


def install_writer(writer: AccessWriter | None) -> None:
    """Send access lines to `writer` instead of through logging (None: through logging again)."""
    global _writer
    if _writer is not None:
        _writer.flush()
    elif writer is not None:
        atexit.register(flush_writer)
    _writer = writer


def flush_writer() -> None:
    """Write every access line gathered so far (at shutdown, and before a worker exits)."""
    if _writer is not None:
        _writer.flush()
