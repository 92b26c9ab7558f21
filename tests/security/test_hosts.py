"""The DNS-rebinding decision, from a table."""

from __future__ import annotations

import pytest

from mcp_barbican.security.hosts import AllowedHosts, check_host_origin, split_host

ALLOWED = AllowedHosts.build("127.0.0.1", ["mcp.example.com", "api.example.com:8443", "*.internal.example"])


@pytest.mark.parametrize(
    ("host", "origin", "verdict"),
    [
        ("127.0.0.1:6001", None, None),
        ("localhost:6001", "http://localhost:5173", None),
        ("[::1]:6001", "http://[::1]:6001", None),
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
    result = check_host_origin(host, origin, ALLOWED)
    assert (result[0] if result else None) == verdict


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
