"""Traces: the W3C traceparent parser, the span attribute builders, and the missing-extra error."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mcp_barbican.config.telemetry import TelemetryConfig
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server.streams import EventStream
from mcp_barbican.server.tracing import (
    Tracing,
    exporter_url,
    request_attributes,
    tool_attributes,
    tool_outcome,
)
from mcp_barbican.tracecontext import TraceParent, clean_tracestate, format_traceparent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", TraceParent(TRACE, SPAN, 1)),
        (f"00-{TRACE}-{SPAN}-00", TraceParent(TRACE, SPAN, 0)),
        (f" 00-{TRACE}-{SPAN}-01\t", TraceParent(TRACE, SPAN, 1)),  # optional whitespace around a header value
        (f"01-{TRACE}-{SPAN}-01-future-field", TraceParent(TRACE, SPAN, 1)),  # a later version may add fields
        (f"cc-{TRACE}-{SPAN}-09", TraceParent(TRACE, SPAN, 9)),
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 ends at the flags
        (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-{SPAN}-01", None),  # upper case is invalid
        (f"00-{TRACE}-{SPAN.upper()}-01", None),
        (f"0-{TRACE}-{SPAN}-01", None),  # wrong lengths
        (f"00-{TRACE[:-1]}-{SPAN}-01", None),
        (f"00-{TRACE}-{SPAN}0-01", None),
        (f"00-{TRACE}-{SPAN}-1", None),
        (f"00_{TRACE}_{SPAN}_01", None),
        (f"00-{TRACE[:-1]}g-{SPAN}-01", None),  # not hex
        ("", None),
        (None, None),
    ],
)
def test_traceparent_parse(header: str | None, expected: TraceParent | None) -> None:
    assert parse_traceparent(header) == expected


def test_traceparent_format_round_trips() -> None:
    text = format_traceparent(int(TRACE, 16), int(SPAN, 16), 1)
    assert text == f"00-{TRACE}-{SPAN}-01"
    assert parse_traceparent(text) == TraceParent(TRACE, SPAN, 1)
    assert format_traceparent(1, 2, 0) == f"00-{'0' * 31}1-{'0' * 15}2-00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vendor=abc,other=1", "vendor=abc,other=1"),
        ("", None),
        (None, None),
        ("a=1\nb=2", None),
        ("a=" + "x" * 600, None),
    ],
)
def test_tracestate_is_passed_on_only_when_clean(value: str | None, expected: str | None) -> None:
    assert clean_tracestate(value) == expected


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        ("https://otel.example.com/custom/traces", "https://otel.example.com/custom/traces"),
    ],
)
def test_exporter_url(endpoint: str, url: str) -> None:
    assert exporter_url(endpoint) == url


SECRET_ARGUMENT = "hunter2-argument-value"
TOKEN = "Bearer secret-token-value"
CALLS: list[dict[str, Any]] = [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": [SECRET_ARGUMENT]}},
    {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"authorization": TOKEN, "nested": {"password": SECRET_ARGUMENT}},
            "_meta": {"progressToken": SECRET_ARGUMENT},
        },
    },
    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 42, "arguments": [SECRET_ARGUMENT]}},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": "not a dict"},
]


@pytest.mark.parametrize("msg", CALLS)
def test_tool_attributes_never_carry_arguments(msg: dict[str, Any]) -> None:
    attributes = tool_attributes("demo", msg, "alice")
    allowed = {"mcp_barbican.mcp.id", "mcp.method.name", "gen_ai.tool.name", "mcp_barbican.principal.id"}
    assert set(attributes) <= allowed
    text = repr(attributes)
    assert SECRET_ARGUMENT not in text and TOKEN not in text and "secret" not in text
    assert attributes["mcp.method.name"] == "tools/call" and attributes["mcp_barbican.principal.id"] == "alice"


def test_tool_name_is_bounded() -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "n" * 5000}}
    assert len(tool_attributes("demo", msg, None)["gen_ai.tool.name"]) == 256


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("POST", "/mcp/{id}", 200, "demo", "alice"), {
            "http.request.method": "POST", "http.route": "/mcp/{id}", "http.response.status_code": 200,
            "mcp_barbican.mcp.id": "demo", "mcp_barbican.principal.id": "alice",
        }),
        (("GET", "/healthz", 0, None, None), {"http.request.method": "GET", "http.route": "/healthz"}),
    ],
)  # fmt: skip
def test_request_attributes(args: tuple[Any, ...], expected: dict[str, Any]) -> None:
    assert request_attributes(*args) == expected


def _answered(body: bytes | None, *, refused: bool = False, failed: bool = False) -> EventStream:
    stream = EventStream("0")
    stream.refused, stream.failed = refused, failed
    if body is not None:
        stream.push(body, final=True)
    return stream


@pytest.mark.parametrize(
    ("stream", "outcome"),
    [
        (_answered(b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'), "ok"),
        (_answered(b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}'), "error"),
        (_answered(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}'), "error"),
        (_answered(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}', failed=True), "error"),
        (_answered(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}', refused=True), "denied"),
        (_answered(None), "sent"),
    ],
)
def test_tool_outcome(stream: EventStream, outcome: str) -> None:
    assert tool_outcome(stream) == outcome


def test_telemetry_without_the_extra_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails as if not installed

    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(ConfigError) as caught:
        Tracing(app, TelemetryConfig(otlp_endpoint="http://127.0.0.1:4318"))
    text = str(caught.value)
    assert caught.value.path == "server.telemetry" and "\n" not in text
    assert text.startswith("server.telemetry: ") and "pip install 'mcp-barbican[otel]'" in text
