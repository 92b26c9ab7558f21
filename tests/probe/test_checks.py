"""The probe's pure judgements, from tables: scoring, severities, session ids, CORS, headers, the target URL."""

from __future__ import annotations

import secrets
import uuid

import pytest

from mcp_barbican.probe.checks import (
    CHECKS,
    Finding,
    Severity,
    cors_problem,
    failing,
    finding,
    header_problems,
    lookalike_origins,
    score,
    session_bits,
    session_id_problems,
)
from mcp_barbican.probe.client import TargetError, _has_event, parse_target

HIGH = finding("auth.invalid", "e")
CRITICAL = finding("auth.missing", "e")
MEDIUM = finding("ratelimit.burst", "e")
LOW = finding("headers.referrer", "e")
INFO = finding("transport.plaintext", "loopback", Severity.INFO)


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        ([], 100),
        ([INFO], 100),
        ([LOW], 97),
        ([MEDIUM], 90),
        ([HIGH], 80),
        ([CRITICAL], 60),
        ([HIGH, finding("auth.invalid", "again")], 80),  # a check counts once
        ([CRITICAL, CRITICAL, HIGH, finding("auth.malformed", "e"), finding("auth.expired", "e")], 0),
        ([finding("transport.plaintext", "x", Severity.INFO), finding("transport.plaintext", "y")], 80),
    ],
)
def test_score(findings: list[Finding], expected: int) -> None:
    assert score(findings) == expected


@pytest.mark.parametrize(
    ("fail_on", "findings", "fails"),
    [
        ("info", [INFO], True),
        ("low", [INFO], False),
        ("low", [LOW], True),
        ("medium", [LOW], False),
        ("medium", [MEDIUM, LOW], True),
        ("high", [MEDIUM], False),
        ("high", [HIGH], True),
        ("high", [CRITICAL], True),
        ("critical", [HIGH, MEDIUM], False),
        ("critical", [CRITICAL], True),
        ("critical", [], False),
    ],
)
def test_fail_on(fail_on: str, findings: list[Finding], fails: bool) -> None:
    assert failing(findings, Severity.parse(fail_on)) is fails


def test_every_check_has_an_id_of_the_published_shape_and_a_severity() -> None:
    for check_id, check in CHECKS.items():
        assert check.id == check_id
        assert check_id.count(".") == 1 and check_id.replace(".", "").replace("_", "").isalpha()
        assert check.title and check.help


TOKEN_IDS = [secrets.token_urlsafe(24) for _ in range(4)]


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (TOKEN_IDS, None),
        ([uuid.uuid4().hex for _ in range(4)], None),
        ([secrets.token_hex(32) for _ in range(3)], None),
        ([TOKEN_IDS[0], TOKEN_IDS[0], TOKEN_IDS[1]], "repeated"),
        (["abc123", "abd124", "xyz999"], "short"),
        ([secrets.token_hex(8) for _ in range(3)], "short"),  # 16 hex chars: 64 bits
        ([f"session-{n:020d}" for n in range(1, 5)], "prefix"),
        ([f"{n:032x}" for n in range(1000, 1004)], "prefix"),
        ([f"{secrets.token_hex(4)}{n:024x}" for n in range(1, 5)], "the same in every id"),
        ([f"{secrets.token_hex(12)}-00000000000000000000-{secrets.token_hex(12)}" for _ in range(4)], "the same"),
        (["a" * 30, "b" * 30], "bits"),
    ],
)
def test_session_id_strength(ids: list[str], problem: str | None) -> None:
    problems = session_id_problems(ids)
    if problem is None:
        assert problems == []
    else:
        assert problems, ids
        if problem != "bits":
            assert any(problem in text for text in problems), problems


@pytest.mark.parametrize(
    ("session_id", "low", "high"),
    [
        ("Zx-9_" + secrets.token_urlsafe(24)[5:], 191, 193),  # 32 chars of base64url: 192 bits at most
        (str(uuid.uuid4()), 127, 129),  # 32 hex digits, the dashes are no entropy
        ("0123456789" * 3, 99, 100),
        ("abcdefghijklmnopqrstuv", 113, 114),  # 22 lowercase alphanumerics
    ],
)
def test_session_bits_estimate(session_id: str, low: float, high: float) -> None:
    assert low <= session_bits(session_id) <= high


def test_repeated_characters_are_not_entropy() -> None:
    assert session_id_problems(["a" * 40, "a" * 39 + "b"])


ORIGIN = "https://evil-example.com"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"access-control-allow-origin": "https://example.com"}, None),
        ({"access-control-allow-origin": ORIGIN}, "cors.reflected"),
        ({"access-control-allow-origin": f" {ORIGIN} "}, "cors.reflected"),
        (
            {"access-control-allow-origin": ORIGIN, "access-control-allow-credentials": "true"},
            "cors.credentials",
        ),
        ({"access-control-allow-origin": "*"}, "cors.wildcard"),
        ({"access-control-allow-origin": "*", "access-control-allow-credentials": "TRUE"}, "cors.credentials"),
        ({"access-control-allow-origin": "null"}, None),  # asked with another origin: not a reflection
    ],
)
def test_cors_judgement(headers: dict[str, str], expected: str | None) -> None:
    problem = cors_problem(ORIGIN, headers)
    assert (problem[0] if problem else None) == expected


def test_null_origin_reflected_is_a_finding() -> None:
    assert cors_problem("null", {"access-control-allow-origin": "null"}) is not None


def test_lookalike_origins_are_the_classic_sloppy_matches() -> None:
    assert lookalike_origins("https", "example.com") == [
        "https://evil-example.com",
        "https://example.com.evil.example",
        "null",
        "https://evil.example",
    ]


GOOD = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "strict-transport-security": "max-age=31536000",
}


@pytest.mark.parametrize(
    ("changes", "https", "expected"),
    [
        ({}, True, set()),
        ({}, False, set()),
        ({"x-content-type-options": None}, False, {"headers.nosniff"}),
        ({"x-content-type-options": "sniff"}, False, {"headers.nosniff"}),
        ({"x-frame-options": None}, False, {"headers.frame"}),
        ({"x-frame-options": "ALLOW-FROM https://a.example"}, False, {"headers.frame"}),
        (
            {"x-frame-options": None, "content-security-policy": "default-src 'none'; frame-ancestors 'none'"},
            False,
            set(),
        ),
        ({"x-frame-options": None, "content-security-policy": "frame-ancestors *"}, False, {"headers.frame"}),
        ({"referrer-policy": None}, False, {"headers.referrer"}),
        ({"cache-control": "no-cache, no-transform"}, False, {"headers.cache"}),
        ({"cache-control": "private, No-Store"}, False, set()),
        ({"cache-control": None}, False, {"headers.cache"}),
        ({"strict-transport-security": None}, True, {"headers.hsts"}),
        ({"strict-transport-security": None}, False, set()),  # HSTS means nothing over http
        ({"strict-transport-security": "max-age=0"}, True, {"headers.hsts"}),
        ({"strict-transport-security": "includeSubDomains; max-age=600"}, True, set()),
        ({"x-xss-protection": "1; mode=block"}, False, {"headers.xss"}),
        ({"x-xss-protection": "0"}, False, set()),
        (
            dict.fromkeys(GOOD),
            True,
            {"headers.nosniff", "headers.frame", "headers.referrer", "headers.cache", "headers.hsts"},
        ),
    ],
)
def test_header_judgement(changes: dict[str, str | None], https: bool, expected: set[str]) -> None:
    headers = {**GOOD, **changes}
    present = {name: value for name, value in headers.items() if value is not None}
    assert {check for check, _evidence in header_problems(present, https=https)} == expected


@pytest.mark.parametrize(
    ("url", "origin", "authority", "loopback"),
    [
        ("http://127.0.0.1:6001/mcp/demo", "http://127.0.0.1:6001", "127.0.0.1:6001", True),
        ("https://mcp.example.com/mcp", "https://mcp.example.com", "mcp.example.com:443", False),
        ("http://[::1]:8080/mcp?x=1", "http://[::1]:8080", "[::1]:8080", True),
        ("http://localhost/mcp", "http://localhost", "localhost:80", True),
        ("http://10.0.0.5:6001/mcp", "http://10.0.0.5:6001", "10.0.0.5:6001", False),
    ],
)
def test_target(url: str, origin: str, authority: str, loopback: bool) -> None:
    target = parse_target(url)
    assert (target.origin, target.authority, target.loopback) == (origin, authority, loopback)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http:///mcp", "https://user:pw@example.com/mcp", "http://example.com:99999/"]
)
def test_bad_targets(url: str) -> None:
    with pytest.raises(TargetError, match="^" + url.split("?")[0][:8]):
        parse_target(url)


@pytest.mark.parametrize(
    ("stream", "complete"),
    [
        (b"", False),
        (b"id: 1\ndata:\n\n", False),  # a priming event carries no message
        (b'event: message\ndata: {"jsonrpc"', False),
        (b'event: message\ndata: {"jsonrpc":"2.0"}\n\n', True),
        (b'id: 0\r\ndata: \r\n\r\nid: 1\r\ndata: {"a":1}\r\n\r\n', True),
    ],
)
def test_event_stream_read_ends_at_the_first_message(stream: bytes, complete: bool) -> None:
    assert _has_event(stream) is complete
