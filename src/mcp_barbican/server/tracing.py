"""OpenTelemetry traces (`server.telemetry`, the optional `otel` extra).

A server span per HTTP request and a child span per tool call, exported over OTLP/HTTP by a
batch processor (flushed at shutdown). A client's W3C `traceparent`/`tracestate` is the parent
(parent-based sampling at `sample_ratio`); while a request is relayed, `tracecontext.OUTGOING`
holds our span's `traceparent`, which HTTP upstream requests carry. Attributes name the route,
status, MCP, principal id, JSON-RPC method, tool and outcome: never a credential, an argument
or a result.

Off (no `server.telemetry`), nothing here runs and OpenTelemetry is never imported: the
endpoint's only cost is looking for TRACE_KEY in the scope.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from mcp_barbican.asgi import get_header
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.jsonrpc import loads
from mcp_barbican.logs import log_unexpected
from mcp_barbican.security.principal import principal_id
from mcp_barbican.server.access import route_of
from mcp_barbican.tracecontext import OUTGOING, clean_tracestate, format_traceparent, parse_traceparent
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from mcp_barbican.config.telemetry import TelemetryConfig
    from mcp_barbican.server.streams import EventStream

__all__ = [
    "TRACE_KEY",
    "RequestTrace",
    "Tracing",
    "exporter_url",
    "request_attributes",
    "tool_attributes",
    "tool_outcome",
]

logger = logging.getLogger(__name__)

#: The request's RequestTrace in the scope (absent when telemetry is off).
TRACE_KEY: Final = "mcp_barbican.trace"
_MAX_NAME: Final = 256
_INSTALL: Final = "pip install 'mcp-barbican[otel]'"
#: Seconds the exporter spends on one batch, retries included.
EXPORT_TIMEOUT: Final = 5.0


def exporter_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: a collector's base URL gets `/v1/traces`; a URL with a path is used as it is."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def request_attributes(
    method: str, route: str, status: int, mcp_id: str | None, principal: str | None
) -> dict[str, str | int]:
    """A request span's attributes: what was asked and how it ended, never a header's value."""
    attributes: dict[str, str | int] = {"http.request.method": method, "http.route": route}
    if status:
        attributes["http.response.status_code"] = status
    if mcp_id is not None:
        attributes["mcp_barbican.mcp.id"] = mcp_id
    if principal is not None:
        attributes["mcp_barbican.principal.id"] = principal
    return attributes


def tool_attributes(mcp_id: str, msg: Message, principal: str | None) -> dict[str, str]:
    """A tool call span's attributes: the MCP, method and tool name only (never arguments or `_meta`)."""
    params = msg.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    attributes = {"mcp_barbican.mcp.id": mcp_id, "mcp.method.name": str(msg.get("method", ""))}
    if isinstance(name, str):
        attributes["gen_ai.tool.name"] = name[:_MAX_NAME]
    if principal is not None:
        attributes["mcp_barbican.principal.id"] = principal
    return attributes


def tool_outcome(stream: EventStream) -> str:
    """ok, error (the upstream's error or unreachable) or denied (the proxy refused it); sent: answer still due."""
    if stream.refused:
        return "denied"
    if stream.failed:
        return "error"
    if stream.final_data is None:
        return "sent"  # a legacy SSE session: the answer comes later on its stream
    answer = stream.final_message or loads(stream.final_data)
    result = answer.get("result")
    if "error" in answer or (isinstance(result, dict) and result.get("isError")):
        return "error"
    return "ok"


class RequestTrace:
    """One request's span, and its tool call's while it is relayed (the endpoint calls begin/end)."""

    __slots__ = ("_tool", "_tracing", "span", "tracestate")

    def __init__(self, tracing: Tracing, span: Span, tracestate: str | None) -> None:
        self._tracing = tracing
        self.span = span
        self.tracestate = tracestate
        self._tool: Span | None = None

    def outgoing(self, span: Span) -> tuple[str, str | None]:
        context = span.get_span_context()
        return format_traceparent(context.trace_id, context.span_id, int(context.trace_flags)), self.tracestate

    def begin_tool(self, mcp_id: str, msg: Message, scope: Scope) -> Token[tuple[str, str | None] | None]:
        """Open the tool call's span; upstream requests made until the token is reset carry it as parent."""
        from opentelemetry import trace

        attributes = tool_attributes(mcp_id, msg, principal_id(scope))
        name = f"tools/call {attributes.get('gen_ai.tool.name', '')}".rstrip()
        self._tool = self._tracing.tracer.start_span(
            name, context=trace.set_span_in_context(self.span), kind=trace.SpanKind.INTERNAL, attributes=attributes
        )
        return OUTGOING.set(self.outgoing(self._tool))

    def end_tool(self, stream: EventStream) -> None:
        span, self._tool = self._tool, None
        if span is None:
            return
        outcome = tool_outcome(stream)
        span.set_attribute("mcp_barbican.outcome", outcome)
        if outcome == "error":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end()


class Tracing:
    """Outermost layer when `server.telemetry` is set: a server span per HTTP request."""

    def __init__(self, app: ASGIApp, config: TelemetryConfig) -> None:
        self.app = app
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise ConfigError(
                f"traces need the OpenTelemetry packages ({exc.name or exc} is missing): {_INSTALL}",
                path="server.telemetry",
            ) from None
        headers = {name: value.get_secret_value() for name, value in config.headers.items()}
        # A batch is given up after EXPORT_TIMEOUT, retries included: a dead collector delays shutdown that long.
        url = exporter_url(config.otlp_endpoint)
        exporter = OTLPSpanExporter(endpoint=url, headers=headers, timeout=EXPORT_TIMEOUT)
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("mcp_barbican")
        logger.info("traces go to %s (sample_ratio %g)", url, config.sample_ratio)

    def _parent(self, scope: Scope) -> tuple[Any, str | None]:
        """The client's span as an OpenTelemetry context (None: a new trace), and its tracestate."""
        header = get_header(scope, b"traceparent")
        parent = parse_traceparent(header.decode("latin-1")) if header is not None else None
        if parent is None:
            return None, None
        from opentelemetry import trace

        raw = get_header(scope, b"tracestate")
        tracestate = clean_tracestate(raw.decode("latin-1") if raw is not None else None)
        state = trace.TraceState.from_header([tracestate]) if tracestate else None
        context = trace.SpanContext(
            int(parent.trace_id, 16),
            int(parent.span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(parent.flags & 0x01),
            trace_state=state,
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(context)), tracestate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        method: str = scope["method"]
        route, mcp_id = route_of(scope["path"])
        context, tracestate = self._parent(scope)
        span = self.tracer.start_span(f"{method} {route}", context=context, kind=SpanKind.SERVER)
        trace = RequestTrace(self, span, tracestate)
        scope[TRACE_KEY] = trace
        token = OUTGOING.set(trace.outgoing(span))
        status = 0

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            OUTGOING.reset(token)
            span.set_attributes(request_attributes(method, route, status, mcp_id, principal_id(scope)))
            if status >= 500 or status == 0:
                span.set_status(Status(StatusCode.ERROR))
            span.end()

    async def aclose(self) -> None:
        """Export what is still queued (the batch processor's flush blocks: off the event loop)."""
        try:
            await asyncio.to_thread(self.provider.shutdown)
        except Exception:  # shutting down: the failure is logged on one line
            log_unexpected(logger, "exporting the last spans failed")
