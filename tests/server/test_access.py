"""The access log: route templates, the line's fields, and its text and JSON forms."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
from typing import Any

import pytest

from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_barbican.cli import TEXT_LOG_FORMAT, JsonFormatter
from mcp_barbican.logs import Fields
from mcp_barbican.security.principal import Principal
from mcp_barbican.server import access
from mcp_barbican.server.access import FLUSH_BYTES, AccessLog, AccessWriter, access_fields, route_of
from mcp_barbican.server.session import Session
from mcp_barbican.types import Message, Receive, Scope, Send


@pytest.mark.parametrize(
    ("path", "route", "mcp_id"),
    [
        ("/mcp/demo", "/mcp/{id}", "demo"),
        ("/mcp/demo/", "/mcp/{id}", "demo"),  # the router serves it as /mcp/demo
        ("/mcp/demo/sse", "/mcp/{id}/sse", "demo"),
        ("/mcp/demo/messages", "/mcp/{id}/messages", "demo"),
        ("/mcp/demo/whatever/else", "/mcp/{id}/{other}", "demo"),
        ("/mcp/" + "x" * 300, "/mcp/{id}", "x" * 64),
        ("/mcp/", "/mcp/{id}", None),
        ("/mcp", "/mcp", None),
        ("/sse", "/sse", None),
        ("/messages", "/messages", None),
        ("/healthz", "/healthz", None),
        ("/readyz", "/readyz", None),
        ("/metrics", "/metrics", None),
        ("/api/v1/mcp/list", "/api/v1/mcp/list", None),
        ("/.well-known/oauth-protected-resource/mcp/demo", "/.well-known/oauth-protected-resource/mcp/{id}", "demo"),
        ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource/mcp", None),
        ("/admin/mcps/demo", "/admin/*", None),
        ("/admin", "/admin/*", None),
        ("/administrator", "/{other}", None),
        ("/secret/path?token=x", "/{other}", None),
    ],
)
def test_route_of(path: str, route: str, mcp_id: str | None) -> None:
    assert route_of(path) == (route, mcp_id)


def _scope(path: str = "/mcp/demo", **extra: object) -> dict[str, Any]:
    headers = [(b"authorization", b"Bearer very-secret-token")]
    return {"type": "http", "method": "POST", "path": path, "headers": headers, **extra}


def test_access_fields_name_the_principal_never_the_credential() -> None:
    scope = _scope() | {PRINCIPAL_KEY: Principal(id="alice", kind="token"), CLIENT_IP_KEY: "10.0.0.7"}
    fields = access_fields(scope, 200, 0.0012345, 321)
    assert fields == {
        "method": "POST",
        "route": "/mcp/{id}",
        "status": 200,
        "mcp": "demo",
        "principal": "alice",
        "duration_ms": 1.234,
        "bytes": 321,
        "client": "10.0.0.7",
    }
    assert "very-secret-token" not in repr(fields)


def _record(fields: dict[str, object]) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "mcp_barbican.access", "levelname": "INFO", "msg": Fields("request", fields)})


def test_access_line_text_and_json() -> None:
    fields = {"method": "GET", "route": "/mcp/{id}", "status": 200, "mcp": "demo", "principal": None}
    fields |= {"duration_ms": 12.5, "bytes": 0, "client": "127.0.0.1", "odd": 'two words "quoted"'}
    record = _record(fields)
    text = record.getMessage()
    expected = "request method=GET route=/mcp/{id} status=200 mcp=demo duration_ms=12.5 bytes=0 client=127.0.0.1"
    assert text == expected + ' odd="two words \\"quoted\\""'
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == "mcp_barbican.access" and line["message"] == "request"
    assert {key: line[key] for key in ("method", "route", "status", "mcp", "duration_ms", "bytes", "client")} == {
        "method": "GET", "route": "/mcp/{id}", "status": 200, "mcp": "demo", "duration_ms": 12.5, "bytes": 0,
        "client": "127.0.0.1",
    }  # fmt: skip
    assert "principal" not in line  # None fields are left out


def test_a_field_never_replaces_the_line_s_own_keys() -> None:
    line = json.loads(JsonFormatter().format(_record({"level": "FORGED", "logger": "x", "status": 1})))
    assert line["level"] == "INFO" and line["logger"] == "mcp_barbican.access" and line["status"] == 1


async def _run(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await AccessLog(app)(scope, receive, send)
    return sent


@pytest.mark.anyio
async def test_one_line_per_request_after_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"de"})

    with caplog.at_level(logging.INFO, logger="mcp_barbican.access"):
        sent = await _run(app, _scope())
    assert len(sent) == 3
    [record] = [r for r in caplog.records if r.name == "mcp_barbican.access"]
    assert isinstance(record.msg, Fields)
    assert record.msg.fields["status"] == 202 and record.msg.fields["bytes"] == 5
    assert record.msg.fields["route"] == "/mcp/{id}"


@pytest.mark.anyio
async def test_a_failing_app_is_logged_and_its_error_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger="mcp_barbican.access"), pytest.raises(RuntimeError):
        await _run(app, _scope())
    [record] = [r for r in caplog.records if r.name == "mcp_barbican.access"]
    assert isinstance(record.msg, Fields) and record.msg.fields["status"] == 0


@pytest.mark.anyio
async def test_a_broken_line_never_breaks_the_request(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = _scope()
    del scope["method"]  # the line cannot be built
    with caplog.at_level(logging.INFO, logger="mcp_barbican.access"):
        sent = await _run(app, scope)
    assert len(sent) == 2
    assert not [r for r in caplog.records if r.name == "mcp_barbican.access"]


class _Quota:
    def release(self, holder: str, session_id: str) -> None: ...


@pytest.mark.parametrize("reason", ["delete", "idle", "shutdown", "reclaimed", "stream closed"])
def test_a_session_logs_its_start_and_end_with_a_hash_of_its_id(caplog: pytest.LogCaptureFixture, reason: str) -> None:
    session = Session("demo", "alice")
    table = {session.id: session}
    with caplog.at_level(logging.INFO, logger="mcp_barbican.session"):
        session.announce(client="10.0.0.7")
        assert session.end(table, _Quota(), reason)  # type: ignore[arg-type]
        assert not session.end(table, _Quota(), "again")  # type: ignore[arg-type]
    started, ended = (r.msg for r in caplog.records if r.name == "mcp_barbican.session")
    assert isinstance(started, Fields) and isinstance(ended, Fields)
    tag = hashlib.sha256(session.id.encode()).hexdigest()[:12]
    assert started.present() == {"mcp": "demo", "session": tag, "principal": "alice", "client": "10.0.0.7"}
    assert ended.present().keys() == {"mcp", "session", "principal", "reason", "duration_s"}
    assert ended.fields["reason"] == reason and ended.fields["session"] == tag
    assert session.id not in caplog.text


def test_a_session_never_announced_ends_silently(caplog: pytest.LogCaptureFixture) -> None:
    session = Session("demo", None)
    with caplog.at_level(logging.INFO, logger="mcp_barbican.session"):
        session.end({}, _Quota(), "closed")  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.name == "mcp_barbican.session"]


WRITER_FIELDS: dict[str, object] = {"method": "POST", "route": "/mcp/{id}", "status": 200, "mcp": "demo"}
WRITER_FIELDS |= {"principal": None, "duration_ms": 1.5, "bytes": 12, "client": "127.0.0.1", "level": "FORGED"}


@pytest.mark.parametrize("worker", [None, 3])
def test_the_writer_renders_what_the_command_line_s_handlers_would(worker: int | None) -> None:
    text_format = TEXT_LOG_FORMAT
    if worker is not None:
        text_format = TEXT_LOG_FORMAT.replace("%(name)s", f"worker={worker} %(name)s")
    handler_text = logging.Formatter(text_format).format(_record(WRITER_FIELDS))
    handler_json = json.loads(JsonFormatter(worker).format(_record(WRITER_FIELDS)))
    text, lines = io.StringIO(), io.StringIO()
    AccessWriter(text, worker=worker).write(WRITER_FIELDS)  # no running loop: written at once
    AccessWriter(lines, json=True, worker=worker).write(WRITER_FIELDS)
    # Everything after the timestamp, which differs by when each was made.
    assert text.getvalue().endswith("\n") and text.getvalue()[23:] == handler_text[23:] + "\n"
    written = json.loads(lines.getvalue())
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
    assert stamp.fullmatch(written.pop("ts")) and stamp.fullmatch(handler_json.pop("ts"))
    assert written == handler_json
    assert written["level"] == "INFO"  # a field never replaces the line's own keys


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.mark.anyio
async def test_the_writer_gathers_lines_and_writes_them_together() -> None:
    stream = CountingStream()
    writer = AccessWriter(stream)
    for _ in range(3):
        writer.write(WRITER_FIELDS)
    assert stream.writes == 0
    await asyncio.sleep(access.FLUSH_EVERY * 3)
    assert stream.writes == 1 and stream.getvalue().count("\n") == 3
    big = {**WRITER_FIELDS, "route": "x" * FLUSH_BYTES}
    writer.write(big)
    assert stream.writes == 2  # past FLUSH_BYTES: at once
    writer.write(WRITER_FIELDS)
    writer.flush()
    assert stream.writes == 3


def test_a_broken_stream_loses_lines_never_raises() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("stream closed")

    AccessWriter(Broken()).write(WRITER_FIELDS)


@pytest.mark.anyio
async def test_the_layer_writes_through_an_installed_writer_and_shutdown_flushes() -> None:
    stream = io.StringIO()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    access.install_writer(AccessWriter(stream))
    try:
        logging.getLogger("mcp_barbican.access").setLevel(logging.INFO)
        await _run(AccessLog(app), {"type": "http", "method": "GET", "path": "/healthz", "headers": []})
        assert stream.getvalue() == ""
        access.flush_writer()
        assert "route=/healthz status=204" in stream.getvalue()
    finally:
        access.install_writer(None)
        logging.getLogger("mcp_barbican.access").setLevel(logging.NOTSET)
