"""The demo server's tools: their definitions, argument checks and what each one does."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeGuard

from mcp_barbican.demo.base import Json, RequestId, ToolError

if TYPE_CHECKING:
    from mcp_barbican.demo.server import DemoServer

__all__ = [
    "TOOL_HANDLERS",
    "TOOLS",
    "TOOLS_BY_NAME",
    "ToolCall",
    "ToolSpec",
    "at_least",
    "check_arguments",
    "error_result",
    "with_defaults",
]


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


def with_defaults(schema: Json, args: Json) -> Json:
    defaults = {name: prop["default"] for name, prop in schema.get("properties", {}).items() if "default" in prop}
    return defaults | args


# ---------------------------------------------------------------------------------------------
# tools


def at_least(version: str, since: str) -> bool:
    return version >= since  # protocol versions are ISO dates, so they sort as strings


def _object_schema(properties: Json, required: list[str]) -> Json:
    schema: Json = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required  # older JSON Schema drafts reject an empty list
    return schema


def _text_result(text: str) -> Json:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def error_result(text: str) -> Json:
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
        if at_least(version, "2025-03-26"):
            entry["annotations"] = self.annotations
        if at_least(version, "2025-06-18"):
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
    if at_least(server.protocol_version, "2025-06-18"):
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
    if at_least(server.protocol_version, "2025-11-25"):
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
