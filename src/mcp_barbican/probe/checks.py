"""The probe's checks and the pure judgements behind them: what passes, what is a finding, the score."""

from __future__ import annotations

import math
import os
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "Severity",
    "cors_problem",
    "failing",
    "header_problems",
    "score",
    "session_id_problems",
]


class Severity(IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        return cls[text.upper()]


@dataclass(frozen=True)
class Check:
    id: str
    severity: Severity
    title: str
    #: What the check sends and what passes (docs/probe.md says the same at length).
    help: str


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    title: str
    evidence: str


def _checks(*items: Check) -> dict[str, Check]:
    return {item.id: item for item in items}


_C = Check
_S = Severity
CHECKS: Final = _checks(
    _C("auth.missing", _S.CRITICAL, "answers without a credential", "initialize, no Authorization: 401/403"),
    _C("auth.malformed", _S.HIGH, "accepts a malformed Authorization", "Bearer, Bearer+space, Basic, junk: 4xx"),
    _C("auth.invalid", _S.HIGH, "accepts an invalid token", "a random bearer token: 401/403"),
    _C("auth.expired", _S.HIGH, "accepts an expired or unsigned JWT", "expired HS256 JWT and alg none JWT: 401/403"),
    _C("auth.duplicate", _S.MEDIUM, "accepts a repeated Authorization", "--token twice with a bad one: refused"),
    _C("auth.error", _S.MEDIUM, "a bad credential makes the server fail", "no 5xx answer to any bad credential"),
    _C("auth.valid", _S.MEDIUM, "the given token does not open a session", "--token: initialize then tools/list"),
    _C("origin.foreign", _S.HIGH, "accepts a foreign Origin", "Origin: https://evil.example: 403"),
    _C("host.rebinding", _S.HIGH, "accepts a foreign Host (DNS rebinding)", "Host: evil.example: 400/403/421"),
    _C("cors.reflected", _S.HIGH, "reflects a look-alike Origin in CORS", "look-alike origins: not allowed back"),
    _C("cors.credentials", _S.HIGH, "CORS allows credentials for any origin", "no * or reflection with credentials"),
    _C("cors.wildcard", _S.LOW, "CORS allows any origin", "Access-Control-Allow-Origin is not *"),
    _C("headers.nosniff", _S.LOW, "no X-Content-Type-Options: nosniff", "the header on API answers"),
    _C("headers.frame", _S.LOW, "no frame protection", "X-Frame-Options DENY/SAMEORIGIN or CSP frame-ancestors"),
    _C("headers.referrer", _S.LOW, "no Referrer-Policy", "a Referrer-Policy header"),
    _C("headers.cache", _S.LOW, "API answers may be cached", "Cache-Control: no-store on API answers"),
    _C("headers.hsts", _S.MEDIUM, "no Strict-Transport-Security over https", "HSTS with max-age > 0 (https only)"),
    _C("headers.xss", _S.LOW, "deprecated X-XSS-Protection filter on", "X-XSS-Protection absent or 0"),
    _C("transport.plaintext", _S.HIGH, "plain HTTP", "https, or plain HTTP on loopback only (info)"),
    _C("tls.legacy", _S.HIGH, "accepts TLS 1.0 or 1.1", "handshakes pinned to each version; 1.0/1.1 refused"),
    _C("ratelimit.burst", _S.MEDIUM, "a burst never gets 429", "a bounded burst of requests: some 429"),
    _C("session.strength", _S.MEDIUM, "weak session ids", ">= 22 chars, distinct, no shared prefix, >= 128 bits"),
    _C("session.binding", _S.HIGH, "a session answers without its credential", "session id alone: 401/403/404"),
    _C("session.hijack", _S.HIGH, "a session answers another credential", "--second-token on a session: 403/404"),
    _C("limits.body", _S.MEDIUM, "an oversized body is processed", "a large JSON body: 413 or closed"),
    _C("jsonrpc.batch", _S.LOW, "a JSON-RPC batch is mishandled", "a batch: a 4xx refusal or JSON answers"),
    _C("mcp.version", _S.LOW, "an unknown MCP-Protocol-Version is accepted", "MCP-Protocol-Version 1999-01-01: 400"),
)

#: What each severity takes off the score of 100.
WEIGHTS: Final = {_S.INFO: 0, _S.LOW: 3, _S.MEDIUM: 10, _S.HIGH: 20, _S.CRITICAL: 40}


def finding(check_id: str, evidence: str, severity: Severity | None = None) -> Finding:
    check = CHECKS[check_id]
    return Finding(check.id, check.severity if severity is None else severity, check.title, evidence)


def score(findings: Iterable[Finding]) -> int:
    """100 less each finding's weight (a check counts once, at its worst), never below 0."""
    worst: dict[str, Severity] = {}
    for item in findings:
        worst[item.check] = max(worst.get(item.check, Severity.INFO), item.severity)
    return max(0, 100 - sum(WEIGHTS[severity] for severity in worst.values()))


def failing(findings: Iterable[Finding], fail_on: Severity) -> bool:
    return any(item.severity >= fail_on for item in findings)


# -- CORS -----------------------------------------------------------------------------------------


def lookalike_origins(scheme: str, host: str) -> list[str]:
    """Origins a sloppy allow-list check (prefix, suffix, substring, `null`) lets through."""
    bare = host.strip("[]")
    return [f"{scheme}://evil-{bare}", f"{scheme}://{bare}.evil.example", "null", "https://evil.example"]


def cors_problem(origin: str, headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(check id, evidence) when the answer to `origin` grants it more than it should; None when it is fine."""
    allowed = headers.get("access-control-allow-origin")
    credentials = headers.get("access-control-allow-credentials", "").strip().lower() == "true"
    if allowed is None:
        return None
    allowed = allowed.strip()
    if allowed == origin:
        kind = "cors.credentials" if credentials else "cors.reflected"
        suffix = " with Access-Control-Allow-Credentials: true" if credentials else ""
        return kind, f"Origin {origin} was allowed back{suffix}"
    if allowed == "*":
        if credentials:
            return "cors.credentials", "Access-Control-Allow-Origin: * with Access-Control-Allow-Credentials: true"
        return "cors.wildcard", f"Access-Control-Allow-Origin: * (asked with Origin {origin})"
    return None


# -- security headers -----------------------------------------------------------------------------


def header_problems(headers: Mapping[str, str], *, https: bool) -> list[tuple[str, str]]:
    """(check id, evidence) for each protection missing from an API answer's headers (names lowercase)."""
    problems: list[tuple[str, str]] = []
    if headers.get("x-content-type-options", "").strip().lower() != "nosniff":
        problems.append(("headers.nosniff", _seen(headers, "x-content-type-options")))
    if not _frames_denied(headers):
        seen = _seen(headers, "x-frame-options") + "; " + _seen(headers, "content-security-policy")
        problems.append(("headers.frame", seen))
    if not headers.get("referrer-policy", "").strip():
        problems.append(("headers.referrer", _seen(headers, "referrer-policy")))
    cache = {part.strip().lower() for part in headers.get("cache-control", "").split(",")}
    if "no-store" not in cache:
        problems.append(("headers.cache", _seen(headers, "cache-control")))
    if https and _hsts_age(headers.get("strict-transport-security", "")) <= 0:
        problems.append(("headers.hsts", _seen(headers, "strict-transport-security")))
    xss = headers.get("x-xss-protection")
    if xss is not None and xss.strip() != "0":
        problems.append(("headers.xss", f"X-XSS-Protection: {xss.strip()} (deprecated; send 0 or nothing)"))
    return problems


def _seen(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    title = "-".join(part.capitalize() for part in name.split("-"))
    return f"{title} absent" if value is None else f"{title}: {value.strip()}"


def _frames_denied(headers: Mapping[str, str]) -> bool:
    if headers.get("x-frame-options", "").strip().upper() in ("DENY", "SAMEORIGIN"):
        return True
    for directive in headers.get("content-security-policy", "").split(";"):
        name, _, value = directive.strip().partition(" ")
        if name.lower() == "frame-ancestors" and "*" not in value.split():
            return True
    return False


def _hsts_age(value: str) -> int:
    for part in value.split(";"):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "max-age":
            try:
                return int(number.strip().strip('"'))
            except ValueError:
                return 0
    return 0


# -- session ids ----------------------------------------------------------------------------------

MIN_SESSION_CHARS: Final = 22
MIN_SESSION_BITS: Final = 128
_MAX_SHARED_PREFIX: Final = 8


_ALPHABETS: Final = (
    (frozenset("0123456789"), 10),
    (frozenset("0123456789abcdef"), 16),
    (frozenset("0123456789ABCDEF"), 16),
    (frozenset("0123456789abcdefghijklmnopqrstuvwxyz"), 36),
    (frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 36),
    (frozenset(string.ascii_letters + string.digits), 62),
    (frozenset(string.ascii_letters + string.digits + "-_"), 64),
    (frozenset(string.ascii_letters + string.digits + "+/"), 64),
)


def session_bits(session_id: str) -> float:
    """Entropy estimate of one id: its length (less separators) times log2 of the smallest alphabet it fits.

    An upper bound: a counter spelled in base64 scores as high as random bytes, hence the pattern checks.
    """
    body = session_id.replace("-", "") if len(set(session_id) - set("0123456789abcdefABCDEF-")) == 0 else session_id
    body = body.rstrip("=")
    chars = set(body)
    size = next((size for alphabet, size in _ALPHABETS if chars <= alphabet), 95)
    return len(body) * math.log2(size)


def session_id_problems(ids: list[str]) -> list[str]:
    """What is wrong with a handful of ids from one server (empty: they look strong)."""
    if not ids:
        return []
    problems: list[str] = []
    if len(set(ids)) < len(ids):
        problems.append(f"{len(ids) - len(set(ids))} repeated id(s) in {len(ids)} sessions")
    shortest = min(len(item) for item in ids)
    if shortest < MIN_SESSION_CHARS:
        problems.append(f"ids as short as {shortest} chars (want >= {MIN_SESSION_CHARS})")
    bits = min(session_bits(item) for item in ids)
    if bits < MIN_SESSION_BITS:
        problems.append(f"about {bits:.0f} bits of entropy (want >= {MIN_SESSION_BITS})")
    if len(ids) > 1:
        shared = len(os.path.commonprefix(ids))
        if shared > _MAX_SHARED_PREFIX and shared > shortest // 3:
            problems.append(f"all ids share a {shared}-char prefix")
        if _sequential(ids):
            problems.append("ids differ only in a counter")
        length = len(ids[0])
        if all(len(item) == length for item in ids):
            fixed = sum(1 for chars in zip(*ids, strict=True) if len(set(chars)) == 1)
            # Random characters agree in every one of a few ids almost never; a template or counter always does.
            if fixed > max(_MAX_SHARED_PREFIX, length // 4):
                problems.append(f"{fixed} of {length} characters are the same in every id")
    return problems


def _sequential(ids: list[str]) -> bool:
    """Ids that differ in one short run of digits, or whose hex values step by small amounts."""
    prefix = len(os.path.commonprefix(ids))
    suffix = len(os.path.commonprefix([item[::-1] for item in ids]))
    middles = [item[prefix : len(item) - suffix] if suffix else item[prefix:] for item in ids]
    if all(len(middle) <= 4 for middle in middles):
        return True
    try:
        values = sorted(int(item.replace("-", ""), 16) for item in ids)
    except ValueError:
        return False
    return all(0 < b - a < 1 << 16 for a, b in zip(values, values[1:], strict=False))
