"""The demo MCP server that `mcp-barbican serve` runs when there is no config file.

A legacy-era (initialize handshake) stdio server speaking newline-delimited JSON-RPC 2.0 on
stdin/stdout and logging to stderr. A client spawns one per session, so it imports nothing beyond
the standard library. Every request runs in its own asyncio task: a slow tool never blocks a ping,
and `notifications/cancelled` cancels exactly the task it names. Tools live in `tools.py`, the
transport in `channel.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from mcp_barbican import __version__
from mcp_barbican.demo.base import (
    CLIENT_REQUEST_TIMEOUT,
    DEFAULT_LOG_LEVEL,
    INSTRUCTIONS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_VERSION,
    LOG_LEVELS,
    MAX_LINE_BYTES,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_NAME,
    SHUTDOWN_GRACE,
    SUPPORTED_VERSIONS,
    Json,
    RequestId,
    RpcError,
    ToolError,
    log,
)
from mcp_barbican.demo.channel import Line, Oversized, StdioLines
from mcp_barbican.demo.tools import (
    TOOL_HANDLERS,
    TOOLS,
    TOOLS_BY_NAME,
    ToolCall,
    at_least,
    check_arguments,
    error_result,
    with_defaults,
)
from mcp_barbican.logs import log_unexpected

__all__ = ["SUPPORTED_VERSIONS", "DemoServer", "StdioLines", "main"]

_NO_ANSWER: Final = "the client closed its input, so it cannot answer"


def _is_request_id(value: object) -> TypeGuard[RequestId]:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode(line: bytes) -> Any:
    return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)


def _progress_token(params: Json) -> RequestId | None:
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if _is_request_id(token) else None


def _unknown_method(method: str) -> RpcError:
    if method == "server/discover":
        return RpcError(METHOD_NOT_FOUND, "server/discover is not supported: this server uses the initialize handshake")
    return RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")


@dataclass(slots=True)
class _InFlight:
    method: str
    task: asyncio.Task[None]


class DemoServer:
    """One MCP session: request dispatch, server-to-client requests and notifications."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send_bytes = send
        self._version: str | None = None
        self._client_capabilities: Json = {}
        self._log_level = DEFAULT_LOG_LEVEL
        self._inflight: dict[RequestId, _InFlight] = {}
        self._awaiting_client: dict[str, asyncio.Future[Json]] = {}
        self._client_ids = itertools.count(1)
        self._input_closed = False
        self._closing = False
        self._methods: dict[str, Callable[[Json], Awaitable[Json]]] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "logging/setLevel": self._set_level,
            "tools/list": self._list_tools,
            "tools/call": self._call_tool,
        }

    @property
    def protocol_version(self) -> str:
        return self._version or LATEST_VERSION

    @property
    def client_capabilities(self) -> Json:
        return self._client_capabilities

    async def serve(self, lines: asyncio.Queue[Line]) -> None:
        """Handle lines until end of input, then shut down."""
        while (line := await lines.get()) is not None:
            self.receive(line)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Finish what finishes within the grace period, then cancel the rest and go quiet."""
        self._input_closed = True
        for future in self._awaiting_client.values():
            if not future.done():
                future.set_exception(ToolError(_NO_ANSWER))
        running = {entry.task for entry in self._inflight.values()}
        if running:
            _, running = await asyncio.wait(running, timeout=SHUTDOWN_GRACE)
        self._closing = True
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=SHUTDOWN_GRACE)

    # -- outgoing ------------------------------------------------------------------------------

    def _send(self, message: Json) -> None:
        if self._closing:
            return  # past the shutdown grace period nobody waits for anything we could still say
        # ASCII escapes keep a lone surrogate from a client's string encodable.
        body = json.dumps(message, separators=(",", ":"), allow_nan=False)
        self._send_bytes(body.encode("ascii") + b"\n")

    def _send_error(self, request_id: RequestId | None, code: int, message: str) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})

    def notify(self, method: str, params: Json) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def log(self, level: str, text: str) -> None:
        """Send a `notifications/message` if `level` is at or above the client's chosen level."""
        log.debug("%s: %s", level, text)
        if LOG_LEVELS.index(level) >= LOG_LEVELS.index(self._log_level):
            self.notify("notifications/message", {"level": level, "logger": SERVER_NAME, "data": text})

    def progress(self, token: RequestId | None, progress: int, total: int, message: str) -> None:
        if token is None:
            return
        params: Json = {"progressToken": token, "progress": progress, "total": total}
        if at_least(self.protocol_version, "2025-03-26"):
            params["message"] = message
        self.notify("notifications/progress", params)

    async def request_client(self, method: str, params: Json) -> Json:
        """Send a request to the client and wait for its result; failures become ToolError."""
        if self._input_closed:
            raise ToolError(_NO_ANSWER)
        request_id = f"demo-s-{next(self._client_ids)}"
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._awaiting_client[request_id] = future
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        try:
            return await asyncio.wait_for(future, CLIENT_REQUEST_TIMEOUT)
        except TimeoutError:
            self.notify("notifications/cancelled", {"requestId": request_id, "reason": "timed out"})
            raise ToolError(f"the client did not answer {method} within {CLIENT_REQUEST_TIMEOUT:.0f} s") from None
        except asyncio.CancelledError:
            self.notify("notifications/cancelled", {"requestId": request_id, "reason": "the tool call was cancelled"})
            raise
        finally:
            del self._awaiting_client[request_id]

    # -- incoming ------------------------------------------------------------------------------

    def receive(self, line: bytes | Oversized) -> None:
        """Handle one input line; nothing a client sends can raise out of here."""
        if isinstance(line, Oversized):
            self._send_error(None, PARSE_ERROR, f"Parse error: line longer than {MAX_LINE_BYTES} bytes")
            return
        if not line.strip():
            return
        try:
            message = _decode(line)
        except (ValueError, RecursionError) as exc:
            self._send_error(None, PARSE_ERROR, f"Parse error: {exc}")
            return
        self._dispatch(message)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, list):
            self._send_error(None, INVALID_REQUEST, "JSON-RPC batches are not supported")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._send_error(None, INVALID_REQUEST, "Invalid request: expected a JSON-RPC 2.0 object")
            return
        method = message.get("method")
        if isinstance(method, str) and "id" in message:
            self._start_request(message["id"], method, message.get("params", {}))
        elif isinstance(method, str):
            self._on_notification(method, message.get("params", {}))
        elif "result" in message or "error" in message:
            self._on_response(message)
        else:
            request_id = message.get("id")
            self._send_error(request_id if _is_request_id(request_id) else None, INVALID_REQUEST, "Invalid request")

    def _start_request(self, request_id: object, method: str, params: object) -> None:
        if not _is_request_id(request_id):
            self._send_error(None, INVALID_REQUEST, "Invalid request: id must be a string or an integer")
            return
        if request_id in self._inflight:
            self._send_error(request_id, INVALID_REQUEST, f"Invalid request: id {request_id!r} is already in use")
            return
        task = asyncio.create_task(self._run_request(request_id, method, params))
        entry = _InFlight(method, task)
        self._inflight[request_id] = entry
        task.add_done_callback(lambda _: self._forget(request_id, entry))

    def _forget(self, request_id: RequestId, entry: _InFlight) -> None:
        if self._inflight.get(request_id) is entry:
            del self._inflight[request_id]

    async def _run_request(self, request_id: RequestId, method: str, params: object) -> None:
        try:
            result = await self._call_method(method, params)
        except asyncio.CancelledError:
            log.info("request %r (%s) cancelled", request_id, method)
            raise
        except RpcError as exc:
            self._send_error(request_id, exc.code, exc.message)
        except Exception:
            log_unexpected(log, "request %r (%s) failed", request_id, method)
            self._send_error(request_id, INTERNAL_ERROR, "Internal error")
        else:
            self._send({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _call_method(self, method: str, params: object) -> Json:
        handler = self._methods.get(method)
        if handler is None:
            raise _unknown_method(method)
        if self._version is None and method not in ("initialize", "ping"):
            raise RpcError(INVALID_REQUEST, f"{method} before initialize: send initialize first")
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: params must be an object")
        return await handler(params)

    def _on_notification(self, method: str, params: object) -> None:
        if not isinstance(params, dict):
            log.warning("ignoring %s with non-object params", method)
        elif method == "notifications/cancelled":
            self._cancel(params.get("requestId"), params.get("reason"))
        elif method == "notifications/initialized":
            log.info("client initialized")
        else:
            log.debug("ignoring notification %s", method)

    def _cancel(self, request_id: object, reason: object) -> None:
        entry = self._inflight.get(request_id) if _is_request_id(request_id) else None
        # The spec forbids cancelling initialize; unknown or finished ids are a normal race.
        if entry is not None and entry.method != "initialize":
            log.info("client cancelled request %r: %s", request_id, reason)
            entry.task.cancel()

    def _on_response(self, message: Json) -> None:
        request_id = message.get("id")
        future = self._awaiting_client.get(request_id) if isinstance(request_id, str) else None
        if future is None or future.done():
            log.warning("ignoring a response to unknown request %r", request_id)
            return
        error, result = message.get("error"), message.get("result")
        if "error" in message:
            text = error.get("message") if isinstance(error, dict) else error
            future.set_exception(ToolError(f"the client refused the request: {text}"))
        elif isinstance(result, dict):
            future.set_result(result)
        else:
            future.set_exception(ToolError("the client answered with a result that is not an object"))

    # -- methods -------------------------------------------------------------------------------

    async def _initialize(self, params: Json) -> Json:
        if self._version is not None:
            raise RpcError(INVALID_REQUEST, "initialize was already called on this connection")
        requested, capabilities = params.get("protocolVersion"), params.get("capabilities")
        client_info = params.get("clientInfo")
        if not isinstance(requested, str) or not isinstance(capabilities, dict) or not isinstance(client_info, dict):
            raise RpcError(
                INVALID_PARAMS, "Invalid params: initialize needs protocolVersion, capabilities and clientInfo"
            )
        self._version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
        self._client_capabilities = capabilities
        log.info("client %r asked for %s, speaking %s", client_info.get("name"), requested, self._version)
        return {
            "protocolVersion": self._version,
            "capabilities": {"tools": {"listChanged": False}, "logging": {}},
            "serverInfo": {"name": SERVER_NAME, "version": __version__},
            "instructions": INSTRUCTIONS,
        }

    async def _ping(self, params: Json) -> Json:
        return {}

    async def _set_level(self, params: Json) -> Json:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        self._log_level = level
        return {}

    async def _list_tools(self, params: Json) -> Json:
        return {"tools": [tool.listing(self.protocol_version) for tool in TOOLS]}

    async def _call_tool(self, params: Json) -> Json:
        name, args = params.get("name"), params.get("arguments")
        if args is None:
            args = {}
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs a tool name")
        tool = TOOLS_BY_NAME.get(name)
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name!r} (this server has {', '.join(TOOLS_BY_NAME)})")
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: tools/call arguments must be an object")
        # Since 2025-11-25 bad arguments are a tool execution error, so the model can correct itself.
        if problem := check_arguments(tool.input_schema, args):
            return error_result(f"invalid arguments for {name}: {problem}")
        call = ToolCall(with_defaults(tool.input_schema, args), _progress_token(params))
        try:
            return await TOOL_HANDLERS[name](self, call)
        except ToolError as exc:
            return error_result(f"{name} failed: {exc}")
        except Exception as exc:
            log_unexpected(log, "tool %s crashed", name)
            return error_result(f"{name} failed unexpectedly: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# entry point


async def _run() -> None:
    channel = StdioLines(asyncio.get_running_loop())
    server = DemoServer(channel.send)
    channel.start()
    try:
        await server.serve(channel.lines)
    finally:
        channel.close(timeout=2.0)  # blocks briefly on purpose: queued responses must reach stdout


def main() -> int:
    """Serve one MCP session on stdin/stdout until stdin closes."""
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")  # stderr
    log.info("%s %s ready (protocols %s)", SERVER_NAME, __version__, ", ".join(SUPPORTED_VERSIONS))
    try:
        asyncio.run(_run())
    except KeyboardInterrupt:
        return 130
    return 0
