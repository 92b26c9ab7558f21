"""The DNS-rebinding decision, from a table."""

from __future__ import annotations

import pytest

from mcp_barbican.security.hosts import AllowedHosts, HostOriginGuard, check_host_origin, split_host
from tests.security.asgi import call, make_scope

ALLOWED = AllowedHosts.build("127.0.0.1", ["mcp.example.com", "api.example.com:8443", "*.internal.example"])


@pytest.mark.parametrize(
    ("host", "origin", "verdict"),
    [
        ("127.0.0.1:6001", None, None),
        ("localhost:6001", "http://localhost:6001", None),
        ("[::1]:6001", "http://[::1]:6001", None),
        ("127.0.0.1:6001", "http://127.0.0.1:6001", None),
        # A page on another local port is another site: loopback origins only on the listener's port.
        ("localhost:6001", "http://localhost:5173", 403),
        ("localhost:6001", "http://127.0.0.1:8080", 403),
        ("localhost:6001", "http://localhost", 403),
        ("localhost:6001", "https://localhost:443", 403),
        ("localhost:6001", "http://[::1]:3000", 403),
        # Configured names admit any port; configured pairs exactly theirs.
        ("localhost:6001", "https://mcp.example.com:8443", None),
        ("localhost:6001", "https://api.example.com:8443", None),
        ("localhost:6001", "https://api.example.com", 403),
        ("localhost:6001", "https://a.internal.example:9", None),
        ("mcp.example.com", "https://mcp.example.com", None),
        ("MCP.EXAMPLE.COM:443", None, None),
        ("api.example.com:8443", None, None),
        ("a.internal.example", None, None),
        ("api.example.com:9999", None, 421),
        ("evil.example.com", None, 421),
        ("internal.example", None, 421),
        (None, None, 421),
        ("", None, 421),
        ("::1", None, 421),
        ("localhost:99999", None, 421),
        ("localhost", "http://evil.example.com", 403),
        ("localhost", "null", 403),
        ("localhost", "file://", 403),
        ("localhost", "http://localhost.evil.net", 403),
        ("localhost", "https://mcp.example.com/path", 403),
    ],
)
def test_host_and_origin_decisions(host: str | None, origin: str | None, verdict: int | None) -> None:
    result = check_host_origin(host, origin, ALLOWED, listener_port=6001)
    assert (result[0] if result else None) == verdict


def test_a_configured_loopback_port_admits_that_origin_only() -> None:
    dev = AllowedHosts.build("127.0.0.1", ["localhost:5173"])
    assert check_host_origin("localhost:6001", "http://localhost:5173", dev, listener_port=6001) is None
    assert check_host_origin("localhost:6001", "http://localhost:5174", dev, listener_port=6001) == (
        403,
        "Origin 'http://localhost:5174' is not allowed",
    )


def test_an_unknown_listener_port_admits_no_loopback_origin() -> None:
    assert check_host_origin("localhost:6001", "http://localhost:6001", ALLOWED) is not None


async def _ok(scope: object, receive: object, send: object) -> None:
    raise AssertionError("an ambiguous request reached the app")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [("Host", "localhost:6001"), ("Host", "evil.example.com")],
        [("Host", "evil.example.com"), ("Host", "localhost:6001")],
        [("Host", "localhost:6001"), ("Host", "localhost:6001")],
        [("Host", "localhost:6001"), ("Origin", "http://localhost:6001"), ("Origin", "http://evil.example.com")],
    ],
)
async def test_duplicate_host_or_origin_is_refused_not_guessed(headers: list[tuple[str, str]]) -> None:
    guard = HostOriginGuard(_ok, allowed=ALLOWED)
    sent = await call(guard, make_scope("POST", "/mcp/demo", headers))
    assert sent.status == 400
    assert sent.json()["error"] == "ambiguous_request"


def test_extra_origins_are_accepted_exactly() -> None:
    def extra(origin: str) -> bool:
        return origin == "https://app.example.org"

    assert check_host_origin("localhost", "https://app.example.org", ALLOWED, extra) is None
    assert check_host_origin("localhost", "https://app.example.org.evil", ALLOWED, extra) is not None


def test_a_wildcard_bind_adds_no_host_name() -> None:
    anywhere = AllowedHosts.build("0.0.0.0", [])
    assert check_host_origin("10.1.2.3:6001", None, anywhere) is not None
    assert check_host_origin("127.0.0.1:6001", None, anywhere) is None


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("a.b:80", ("a.b", 80)), ("[::1]", ("::1", None)), ("[::1]:1", ("::1", 1)), ("x:0", None), ("::1", None)],
)
def test_split_host(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert split_host(value) == parsed
