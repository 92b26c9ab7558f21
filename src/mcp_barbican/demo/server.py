"""The demo MCP server that `mcp-barbican serve` runs when there is no config file.

A legacy-era (initialize handshake) stdio server speaking newline-delimited JSON-RPC 2.0 on
stdin/stdout and logging to stderr. A client spawns one per session, so it imports nothing beyond
the standard library. Every request runs in its own asyncio task: a slow tool never blocks a ping,
and `notifications/cancelled` cancels exactly the task it names.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from mcp_barbican import __version__

__all__ = ["SUPPORTED_VERSIONS", "DemoServer", "StdioChannel", "main"]

Json = dict[str, Any]
RequestId = str | int

SERVER_NAME: Final = "mcp-barbican-demo"
SUPPORTED_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION: Final = SUPPORTED_VERSIONS[-1]
INSTRUCTIONS: Final = (
    "A demo server bundled with mcp-barbican: try echo, add, slow (progress and cancellation), "
    "sample and elicit (requests back to the client) and whoami (the environment it was given)."
)
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
DEFAULT_LOG_LEVEL: Final = "info"

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

# Sampling and elicitation wait on a human, so this is generous; the spec still wants a bound.
CLIENT_REQUEST_TIMEOUT: Final = 300.0
# After stdin closes, quick requests still get their answers; longer ones are cancelled.
SHUTDOWN_GRACE: Final = 0.5
MAX_LINE_BYTES: Final = 16 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024

_NO_ANSWER: Final = "the client closed its input, so it cannot answer"

log = logging.getLogger(SERVER_NAME)


class RpcError(Exception):
    """A JSON-RPC error response for the current request."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ToolError(Exception):
    """A tool failure reported to the model as a result with `isError: true`."""


class _Oversized:
    """Stands for an input line longer than MAX_LINE_BYTES, which was dropped unread."""


Line = bytes | _Oversized | None


# ---------------------------------------------------------------------------------------------
# stdio transport


class StdioChannel:
    """Moves newline-delimited messages between the event loop and two file descriptors.

    Raw fds on daemon threads rather than asyncio pipe transports: those set O_NONBLOCK on the
    shared file description (which breaks a terminal the demo was started from), and a daemon
    thread blocked inside a buffered `sys.stdin` lock aborts interpreter shutdown.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, in_fd: int = 0, out_fd: int = 1) -> None:
        self.lines: asyncio.Queue[Line] = asyncio.Queue()
        self._loop = loop
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read_lines, name="demo-stdin", daemon=True)
        self._writer = threading.Thread(target=self._write_lines, name="demo-stdout", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def send(self, data: bytes) -> None:
        self._outbox.put(data)

    def close(self, timeout: float) -> None:
        """Flush what was sent so far, then stop the writer."""
        self._outbox.put(None)
        self._writer.join(timeout)

    def _read_chunk(self) -> bytes:
        try:
            return os.read(self._in_fd, _READ_CHUNK)
        except OSError:
            return b""

    def _read_lines(self) -> None:
        parts: list[bytes] = []
        size = 0
        for chunk in iter(self._read_chunk, b""):
            *complete, tail = chunk.split(b"\n")
            for piece in complete:
                self._post(_Oversized() if size + len(piece) > MAX_LINE_BYTES else b"".join([*parts, piece]))
                parts, size = [], 0
            parts.append(tail)
            size += len(tail)
            if size > MAX_LINE_BYTES:
                parts = []  # keep counting `size` so the line is reported once its newline arrives
        if size:
            self._post(_Oversized() if size > MAX_LINE_BYTES else b"".join(parts))
        self._post(None)

    def _post(self, line: Line) -> None:
        try:
            self._loop.call_soon_threadsafe(self.lines.put_nowait, line)
        except RuntimeError:
            pass  # the loop is already closed: nobody is listening any more

    def _write_lines(self) -> None:
        while (data := self._outbox.get()) is not None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._out_fd, view) :]
            except OSError:
                return  # the client stopped reading; its closed stdin ends the session


# ---------------------------------------------------------------------------------------------
# argument checking for the small JSON Schema subset the tools use


def _is_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_integer(value: object) -> bool:
    return _is_number(value) and (isinstance(value, int) or value.is_integer())


_TYPE_CHECKS: Final[dict[str, Callable[[object], bool]]] = {
    "string": lambda value: isinstance(value, str),
    "number": _is_number,
    "integer": _is_integer,
}


def _check_value(schema: Json, value: object) -> str | None:
    kind = schema["type"]
    if not _TYPE_CHECKS[kind](value):
        return f"expected {kind}, got {json.dumps(value)[:80]}"
    if _is_number(value) and value < schema.get("minimum", -math.inf):
        return f"must be at least {schema['minimum']}"
    if _is_number(value) and value > schema.get("maximum", math.inf):
        return f"must be at most {schema['maximum']}"
    return None


def check_arguments(schema: Json, args: Json) -> str | None:
    """Why `args` does not satisfy the tool's input schema, or None when it does."""
    properties: Json = schema.get("properties", {})
    missing = [name for name in schema.get("required", []) if name not in args]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    unknown = sorted(set(args) - set(properties))
    if unknown:
        return f"unexpected argument(s): {', '.join(unknown)}"
    for name, value in args.items():
        if problem := _check_value(properties[name], value):
            return f"{name}: {problem}"
    return None


def _with_defaults(schema: Json, args: Json) -> Json:
    defaults = {name: prop["default"] for name, prop in schema.get("properties", {}).items() if "default" in prop}
    return defaults | args


# ---------------------------------------------------------------------------------------------
# tools


def _at_least(version: str, since: str) -> bool:
    return version >= since  # protocol versions are ISO dates, so they sort as strings


def _object_schema(properties: Json, required: list[str]) -> Json:
    schema: Json = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required  # older JSON Schema drafts reject an empty list
    return schema


def _text_result(text: str) -> Json:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _error_result(text: str) -> Json:
    return {"content": [{"type": "text", "text": text}], "isError": True}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_schema: Json
    annotations: Json
    output_schema: Json | None = None

    def listing(self, version: str) -> Json:
        """The tools/list entry, without fields the negotiated protocol version does not define."""
        entry: Json = {"name": self.name, "description": self.description, "inputSchema": self.input_schema}
        if _at_least(version, "2025-03-26"):
            entry["annotations"] = self.annotations
        if _at_least(version, "2025-06-18"):
            entry["title"] = self.title
            if self.output_schema is not None:
                entry["outputSchema"] = self.output_schema
        return entry


@dataclass(frozen=True, slots=True)
class ToolCall:
    args: Json
    progress_token: RequestId | None


_READ_ONLY: Final[Json] = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
_ASKS_CLIENT: Final[Json] = {"readOnlyHint": True, "idempotentHint": False, "openWorldHint": False}

TOOLS: Final = (
    ToolSpec(
        name="echo",
        title="Echo",
        description="Returns the message unchanged.",
        input_schema=_object_schema({"message": {"type": "string", "description": "Text to send back."}}, ["message"]),
        annotations=_READ_ONLY,
    ),
    ToolSpec(
        name="add",
        title="Add two numbers",
        description="Adds a and b; the sum is also returned as structured content.",
        input_schema=_object_schema({"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"]),
        annotations=_READ_ONLY,
        output_schema=_object_schema({"sum": {"type": "number"}}, ["sum"]),
    ),
    ToolSpec(
        name="slow",
        title="Slow task",
        description=(
            "Waits `seconds` in `steps` equal steps, reporting progress (when the request carries a "
            "progressToken) and an info log after each step. Cancellable."
        ),
        input_schema=_object_schema(
            {
                "seconds": {"type": "number", "minimum": 0, "maximum": 30, "default": 2},
                "steps": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
            },
            [],
        ),
        annotations=_READ_ONLY,
    ),
    ToolSpec(
        name="sample",
        title="Ask the client's model",
        description="Sends the prompt to the client's model with sampling/createMessage and returns its answer.",
        input_schema=_object_schema({"prompt": {"type": "string", "description": "What to ask."}}, ["prompt"]),
        annotations=_ASKS_CLIENT,
    ),
    ToolSpec(
        name="elicit",
        title="Ask the user",
        description="Asks the user a question through elicitation/create (form mode) and returns the action taken.",
        input_schema=_object_schema({"question": {"type": "string", "description": "What to ask."}}, ["question"]),
        annotations=_ASKS_CLIENT,
    ),
    ToolSpec(
        name="whoami",
        title="Environment variable names",
        description="Lists the names (never the values) of the environment variables this server process sees.",
        input_schema=_object_schema({}, []),
        annotations=_READ_ONLY,
    ),
)
TOOLS_BY_NAME: Final = {tool.name: tool for tool in TOOLS}

ToolHandler = Callable[["DemoServer", ToolCall], Awaitable[Json]]


async def _echo(server: DemoServer, call: ToolCall) -> Json:
    return _text_result(call.args["message"])


async def _add(server: DemoServer, call: ToolCall) -> Json:
    try:
        total = call.args["a"] + call.args["b"]
    except OverflowError:  # a huge integer plus a float
        total = math.inf
    if isinstance(total, float) and not math.isfinite(total):
        raise ToolError("the sum does not fit in a double; use smaller numbers")
    result = _text_result(json.dumps(total))
    if _at_least(server.protocol_version, "2025-06-18"):
        result["structuredContent"] = {"sum": total}
    return result


async def _slow(server: DemoServer, call: ToolCall) -> Json:
    steps = int(call.args["steps"])
    pause = call.args["seconds"] / steps
    done = 0
    try:
        for done in range(1, steps + 1):
            await asyncio.sleep(pause)
            server.progress(call.progress_token, done, steps, f"step {done} of {steps}")
            server.log("info", f"slow: step {done} of {steps}")
    except asyncio.CancelledError:
        server.log("notice", f"slow: cancelled after {done - 1} of {steps} steps")
        raise
    return _text_result(f"done after {steps} steps")


def _block_text(block: object) -> str | None:
    if isinstance(block, dict) and block.get("type") == "text" and isinstance(text := block.get("text"), str):
        return text
    return None


def _sampled_text(result: Json) -> str:
    content = result.get("content")
    blocks = content if isinstance(content, list) else [content]
    texts = [text for block in blocks if (text := _block_text(block)) is not None]
    if not texts:
        raise ToolError("the client's model answered without any text content")
    return "".join(texts)


async def _sample(server: DemoServer, call: ToolCall) -> Json:
    if "sampling" not in server.client_capabilities:
        raise ToolError("the client did not declare the sampling capability in initialize, so it cannot be asked")
    params = {
        "messages": [{"role": "user", "content": {"type": "text", "text": call.args["prompt"]}}],
        "maxTokens": 256,
    }
    result = await server.request_client("sampling/createMessage", params)
    return _text_result(f"the client's model said: {_sampled_text(result)}")


def _supports_form_elicitation(capability: object) -> bool:
    # An empty elicitation object predates modes and means form support.
    return isinstance(capability, dict) and (not capability or "form" in capability)


async def _elicit(server: DemoServer, call: ToolCall) -> Json:
    if not _supports_form_elicitation(server.client_capabilities.get("elicitation")):
        raise ToolError("the client did not declare form-mode elicitation in initialize, so the user cannot be asked")
    answer = {"type": "string", "title": "Answer", "description": "Your answer."}
    schema = {"type": "object", "properties": {"answer": answer}, "required": ["answer"]}
    params: Json = {"message": call.args["question"], "requestedSchema": schema}
    if _at_least(server.protocol_version, "2025-11-25"):
        params["mode"] = "form"
    result = await server.request_client("elicitation/create", params)
    action = result.get("action")
    if action not in ("accept", "decline", "cancel"):
        raise ToolError(f"the client answered elicitation/create with an unknown action {action!r}")
    outcome: Json = {"action": action}
    if action == "accept":
        outcome["content"] = result.get("content", {})
    return _text_result(json.dumps(outcome, ensure_ascii=False))


async def _whoami(server: DemoServer, call: ToolCall) -> Json:
    names = sorted(os.environ)
    return _text_result("\n".join(names) if names else "(no environment variables)")


TOOL_HANDLERS: Final[dict[str, ToolHandler]] = {
    "echo": _echo,
    "add": _add,
    "slow": _slow,
    "sample": _sample,
    "elicit": _elicit,
    "whoami": _whoami,
}


# ---------------------------------------------------------------------------------------------
# JSON-RPC session


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
        if _at_least(self.protocol_version, "2025-03-26"):
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

    def receive(self, line: bytes | _Oversized) -> None:
        """Handle one input line; nothing a client sends can raise out of here."""
        if isinstance(line, _Oversized):
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
            log.exception("request %r (%s) failed", request_id, method)
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
            return _error_result(f"invalid arguments for {name}: {problem}")
        call = ToolCall(_with_defaults(tool.input_schema, args), _progress_token(params))
        try:
            return await TOOL_HANDLERS[name](self, call)
        except ToolError as exc:
            return _error_result(f"{name} failed: {exc}")
        except Exception as exc:
            log.exception("tool %s crashed", name)
            return _error_result(f"{name} failed unexpectedly: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# entry point


async def _run() -> None:
    channel = StdioChannel(asyncio.get_running_loop())
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
