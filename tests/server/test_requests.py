"""The Streamable HTTP request rules, from tables."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_barbican.server.requests import (
    MODERN_VERSION_KEY,
    accepts,
    header_mismatch,
    parse_event_id,
    sessionless,
    well_formed,
)
from tests.security.asgi import make_scope


@pytest.mark.parametrize(
    ("accept", "media", "expected"),
    [
        (None, b"application/json", False),
        ("application/json, text/event-stream", b"text/event-stream", True),
        ("application/json", b"text/event-stream", False),
        ("*/*", b"text/event-stream", True),
    ],
)
def test_accepts(accept: str | None, media: bytes, expected: bool) -> None:
    headers = [("accept", accept)] if accept is not None else []
    assert accepts(make_scope("POST", "/mcp/m", headers), media) is expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param({"method": "ping", "id": 1}, True, id="request"),
        pytest.param({"method": "ping", "id": "a"}, True, id="string-id"),
        pytest.param({"method": "ping", "id": True}, False, id="boolean-id"),
        pytest.param({"method": "ping", "id": 1.5}, False, id="float-id"),
        pytest.param({"method": 3}, False, id="method-not-a-string"),
        pytest.param({"method": "notifications/initialized"}, True, id="notification"),
        pytest.param({"id": 1, "result": {}}, True, id="response"),
        pytest.param({"id": 1}, False, id="neither"),
    ],
)
def test_well_formed(message: dict[str, Any], expected: bool) -> None:
    assert well_formed(message) is expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"method": "server/discover", "id": 1}, True),
        ({"method": "tools/list", "id": 1, "params": {"_meta": {MODERN_VERSION_KEY: "2026-07-28"}}}, True),
        ({"method": "tools/list", "id": 1, "params": {"_meta": {}}}, False),
        ({"method": "tools/list", "id": 1, "params": "odd"}, False),
    ],
)
def test_sessionless(message: dict[str, Any], expected: bool) -> None:
    assert sessionless(message) is expected


MODERN = {"method": "tools/list", "id": 1, "params": {"_meta": {MODERN_VERSION_KEY: "2026-07-28"}}}


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([], None),
        ([("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")], None),
        ([("mcp-method", "tools/call")], "Mcp-Method"),
        ([("mcp-protocol-version", "2025-11-25")], "MCP-Protocol-Version"),
    ],
)
def test_header_mismatch(headers: list[tuple[str, str]], problem: str | None) -> None:
    found = header_mismatch(make_scope("POST", "/mcp/m", headers), MODERN)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("abc-12", ("abc", 12)), ("a-b-3", ("a-b", 3)), ("-3", None), ("abc-", None), ("abc-x", None), ("", None)],
)
def test_parse_event_id(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_event_id(value) == expected
