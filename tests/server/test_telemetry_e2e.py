"""Traces and access/session logs through a running proxy.

An in-process OTLP/HTTP receiver decodes what the proxy exports; a Streamable HTTP upstream
records the headers it gets. A tool call with a client `traceparent` must export a request span
and a tool-call span in the client's trace, and the upstream must see a `traceparent` in that
trace whose parent is one of our spans. With telemetry off nothing goes upstream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import mcp_barbican
from tests.proxy import TOKEN, RunningProxy, free_port, run_proxy
from tests.server.test_auth_e2e import RecordingUpstream
from tests.server.test_endpoint import INIT, MCP_HEADERS
from tests.threaded_server import serve_in_thread

pytestmark = pytest.mark.e2e

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
AGGREGATE_TRACE = "0af7651916cd43dd8448eb211c80319c"
SECRET_ARGUMENT = "argument-value-that-must-not-leak"
CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "noop", "arguments": {"password": SECRET_ARGUMENT}},
}


@dataclass
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    service: str


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback (protobuf bodies), on its own event loop in a thread."""

    port: int = field(default_factory=free_port)
    spans: list[ExportedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        found = []
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    found.append(
                        ExportedSpan(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                            attributes,
                            str(resource.get("service.name")),
                        )
                    )
        with self.lock:
            self.spans.extend(found)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def exported(self) -> list[ExportedSpan]:
        with self.lock:
            return list(self.spans)

    @contextlib.contextmanager
    def serve(self) -> Iterator[None]:
        app = web.Application()
        app.router.add_post("/v1/traces", self.handle)
        with serve_in_thread(app, self.port):
            yield


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def _url(proxy: RunningProxy, mcp_id: str | None) -> str:
    return proxy.url(mcp_id) if mcp_id is not None else f"{proxy.base}/mcp"


def _session(proxy: RunningProxy, mcp_id: str | None) -> str:
    response = httpx2.post(_url(proxy, mcp_id), headers=MCP_HEADERS, json=INIT, timeout=30)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
    assert httpx2.post(_url(proxy, mcp_id), headers=headers, json=initialized, timeout=30).status_code == 202
    return session


def _call(
    proxy: RunningProxy, mcp_id: str | None, session: str, extra: dict[str, str], tool: str = "noop"
) -> httpx2.Response:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session, **extra}
    call = {**CALL, "params": {**CALL["params"], "name": tool}}  # type: ignore[dict-item]
    response = httpx2.post(_url(proxy, mcp_id), headers=headers, json=call, timeout=30)
    assert response.status_code == 200, response.text
    return response


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_a_tool_call_exports_its_spans_in_the_client_s_trace_and_passes_it_upstream(tmp_path: Path) -> None:
    receiver, upstream = OtlpReceiver(), RecordingUpstream()
    telemetry = {"otlp_endpoint": receiver.url, "service_name": "barbican-test", "sample_ratio": 1.0}
    mcps = [{"id": "rec", "url": upstream.url, "transport": "streamable-http", "start_timeout": "5s"}]
    traceparent = f"00-{TRACE}-{CLIENT_SPAN}-01"
    with receiver.serve(), upstream.serve():
        with run_proxy(tmp_path, mcps, server={"telemetry": telemetry}) as proxy:
            session = _session(proxy, "rec")
            _call(proxy, "rec", session, {"traceparent": traceparent, "tracestate": "vendor=abc"})
            # The same through /mcp, every MCP behind one endpoint: the tool is named {id}__{tool} there.
            aggregated = _session(proxy, None)
            _call(proxy, None, aggregated, {"traceparent": f"00-{AGGREGATE_TRACE}-{CLIENT_SPAN}-01"}, "rec__noop")
        # The proxy has stopped: shutdown flushed the batch processor.
        _wait(lambda: any(s.name.startswith("tools/call") for s in receiver.exported()))
        spans = receiver.exported()

    in_trace = [span for span in spans if span.trace_id == TRACE]
    [request] = [span for span in in_trace if span.name == "POST /mcp/{id}"]
    [tool] = [span for span in in_trace if span.name == "tools/call noop"]
    assert request.parent_id == CLIENT_SPAN and request.kind == 2  # SPAN_KIND_SERVER
    assert request.service == "barbican-test"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/mcp/{id}"
    assert request.attributes["mcp_barbican.mcp.id"] == "rec"
    assert request.attributes["mcp_barbican.principal.id"]
    assert tool.parent_id == request.span_id
    assert tool.attributes["mcp_barbican.outcome"] == "ok"
    assert tool.attributes["gen_ai.tool.name"] == "noop"
    assert tool.attributes["mcp.method.name"] == "tools/call"

    # The upstream got our tool-call span as the parent, in the client's trace, and the client's tracestate.
    [sent] = [headers for headers in upstream.headers if TRACE in headers.get("traceparent", "")]
    version, trace_id, parent, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert parent == tool.span_id
    assert sent["tracestate"] == "vendor=abc"

    [fanned] = [span for span in spans if span.trace_id == AGGREGATE_TRACE and span.name == "POST /mcp"]
    [fanned_tool] = [span for span in spans if span.trace_id == AGGREGATE_TRACE and span.name.startswith("tools/")]
    assert fanned.parent_id == CLIENT_SPAN and fanned_tool.parent_id == fanned.span_id
    assert fanned_tool.attributes["mcp_barbican.mcp.id"] == "rec"
    assert fanned_tool.attributes["mcp_barbican.outcome"] == "ok"
    # The member's upstream session opens on first use, inside the call: each of its requests is in the trace.
    parents = {h["traceparent"].split("-")[2] for h in upstream.headers if AGGREGATE_TRACE in h.get("traceparent", "")}
    assert fanned_tool.span_id in parents and parents <= {fanned_tool.span_id, fanned.span_id}

    text = json.dumps([span.attributes for span in spans])
    assert TOKEN not in text and SECRET_ARGUMENT not in text and "password" not in text


def test_off_nothing_goes_upstream_and_logs_are_json_lines(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    mcps = [{"id": "rec", "url": upstream.url, "transport": "streamable-http", "start_timeout": "5s"}]
    with upstream.serve(), run_proxy(tmp_path, mcps, args=["--log-format", "json"]) as proxy:
        session = _session(proxy, "rec")
        _call(proxy, "rec", session, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01", "tracestate": "vendor=abc"})
        # A GET stream lives until its session ends: its line comes then, with its duration.
        opened, attached = time.monotonic(), threading.Event()
        stream = threading.Thread(target=_read_get_stream, args=(proxy, session, attached), daemon=True)
        stream.start()
        assert attached.wait(20), "the GET stream never opened"
        time.sleep(0.5)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        assert httpx2.delete(proxy.url("rec"), headers=headers, timeout=30).status_code == 204
        stream.join(10)
        held = time.monotonic() - opened
    lines = _json_lines(proxy.log_text())  # read once the proxy stopped: a line follows its answer

    assert upstream.headers, "the upstream was never called"
    for sent in upstream.headers:
        assert "traceparent" not in {name.lower() for name in sent}
        assert "tracestate" not in {name.lower() for name in sent}

    access = [line for line in lines if line["logger"] == "mcp_barbican.access"]
    posts = [line for line in access if line["method"] == "POST" and line["route"] == "/mcp/{id}"]
    assert len(posts) == 3  # initialize, initialized, tools/call: one line each
    call = posts[-1]
    assert call["status"] == 200 and call["mcp"] == "rec" and call["client"] == "127.0.0.1"
    assert call["level"] == "INFO" and call["message"] == "request"
    assert isinstance(call["principal"], str) and call["principal"]
    assert call["duration_ms"] >= 0 and call["bytes"] > 0
    [get] = [line for line in access if line["method"] == "GET" and line["route"] == "/mcp/{id}"]
    assert get["status"] == 200 and 500 <= get["duration_ms"] <= held * 1000 + 1000
    [delete] = [line for line in access if line["method"] == "DELETE"]
    assert delete["status"] == 204

    sessions = [line for line in lines if line["logger"] == "mcp_barbican.session"]
    tag = hashlib.sha256(session.encode()).hexdigest()[:12]
    [started] = [line for line in sessions if line["message"] == "session started"]
    [ended] = [line for line in sessions if line["message"] == "session ended"]
    assert started["session"] == ended["session"] == tag
    assert started["mcp"] == ended["mcp"] == "rec" and started["principal"] == call["principal"]
    assert ended["reason"] == "delete" and ended["duration_s"] > 0
    assert session not in proxy.log_text() and TOKEN not in proxy.log_text()


def _read_get_stream(proxy: RunningProxy, session: str, attached: threading.Event) -> None:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session, "Accept": "text/event-stream"}
    with (
        contextlib.suppress(httpx2.HTTPError),
        httpx2.stream("GET", proxy.url("rec"), headers=headers, timeout=30) as response,
    ):
        for _ in response.iter_bytes():  # the priming event comes first
            attached.set()


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict) and "logger" in line:
                lines.append(line)
    return lines


def test_off_never_imports_opentelemetry(tmp_path: Path) -> None:
    code = (
        "import pathlib, sys\n"
        "from mcp_barbican.config import load_config\n"
        "from mcp_barbican.server.app import build_app\n"
        f"build_app(load_config(pathlib.Path({str(tmp_path / 'c.yaml')!r}), {{}}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    (tmp_path / "c.yaml").write_text("mcps: []\nserver: {storage: {type: memory}}\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_telemetry_without_the_extra_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("mcps: []\nserver: {telemetry: {otlp_endpoint: 'http://127.0.0.1:4318'}}\n")
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opentelemetry' or name.startswith('opentelemetry.'):\n"
        "            raise ImportError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {"PYTHONPATH": f"{blocker}:{Path(mcp_barbican.__file__).parents[1]}", "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(tmp_path / "c.yaml"), "--port", str(free_port())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "server.telemetry" in done.stderr and "pip install 'mcp-barbican[otel]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_collector_never_fails_a_request_nor_puts_a_traceback_in_the_log(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    telemetry = {"otlp_endpoint": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    mcps = [{"id": "rec", "url": upstream.url, "transport": "streamable-http", "start_timeout": "5s"}]
    with upstream.serve(), run_proxy(tmp_path, mcps, server={"telemetry": telemetry}) as proxy:
        session = _session(proxy, "rec")
        _call(proxy, "rec", session, {"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
    # run_proxy fails the test when the log holds a traceback; the export failure is one line.
    assert "Traceback" not in proxy.log_text()
