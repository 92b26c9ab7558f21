"""Runs the checks against one MCP endpoint: bounded requests, short timeouts, the token only to its origin."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from mcp_barbican.probe.checks import (
    CHECKS,
    Finding,
    Severity,
    cors_problem,
    finding,
    header_problems,
    lookalike_origins,
    session_bits,
    session_id_problems,
)
from mcp_barbican.probe.client import Response, Target, Unreachable, send
from mcp_barbican.probe.messages import (
    BAD_PROTOCOL_VERSION,
    FOREIGN_HOST,
    FOREIGN_ORIGIN,
    JSON_HEADERS,
    PROTOCOL_VERSION,
    bad_credentials,
    initialize,
    jwt,
    rpc,
)
from mcp_barbican.probe.tlsversions import tls_versions

__all__ = ["MAX_BURST", "MAX_BODY_BYTES", "Options", "Report", "TargetUnreachable", "run"]

MAX_BURST: Final = 200
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
#: Session ids gathered for the strength check (each session is closed again).
SESSION_SAMPLES: Final = 4
_BURST_CONCURRENCY: Final = 8
#: 429s outside the burst are waited out at most this often in a run, each for at most MAX_RETRY_WAIT seconds.
MAX_RETRIES: Final = 10
MAX_RETRY_WAIT: Final = 3.0


class TargetUnreachable(Exception):
    """The first request got no answer at all: the probe tests nothing."""


@dataclass(frozen=True)
class Options:
    token: str | None = None
    second_token: str | None = None
    timeout: float = 5.0
    burst: int = 60
    body_bytes: int = 5 * 1024 * 1024
    ssl_context: ssl.SSLContext | None = None


@dataclass
class Report:
    target: str
    findings: list[Finding] = field(default_factory=list)
    passed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    requests: int = 0


@dataclass
class _Session:
    id: str | None
    auth: list[tuple[str, bytes | str]]

    def headers(self, *, version: str = PROTOCOL_VERSION) -> list[tuple[str, bytes | str]]:
        extra: list[tuple[str, bytes | str]] = [("MCP-Protocol-Version", version)]
        if self.id is not None:
            extra.append(("Mcp-Session-Id", self.id))
        return [*JSON_HEADERS, *self.auth, *extra]


class _Probe:
    def __init__(self, target: Target, options: Options) -> None:
        self.target = target
        self.options = options
        self.report = Report(target.url)
        self.opened: list[_Session] = []
        self.last_open: Response | None = None
        self.retries = 0

    async def request(
        self,
        headers: list[tuple[str, bytes | str]],
        body: bytes = b"",
        *,
        method: str = "POST",
        host: str | None = None,
        patient: bool = True,
    ) -> Response:
        """One request; a 429 outside the burst is waited out (Retry-After, bounded) and asked once more."""
        for _attempt in range(2):
            self.report.requests += 1
            answer = await send(
                self.target,
                method,
                headers,
                body,
                timeout=self.options.timeout,
                ssl_context=self.options.ssl_context,
                host=host,
            )
            if answer.status != 429 or not patient or self.retries >= MAX_RETRIES:
                break
            self.retries += 1
            await asyncio.sleep(_retry_after(answer.header("retry-after")))
        return answer

    def auth(self, token: str | None) -> list[tuple[str, bytes | str]]:
        return [] if token is None else [("Authorization", f"Bearer {token}")]

    def found(self, check_id: str, evidence: str, severity: Severity | None = None) -> None:
        """A finding; one per check and severity, its evidence growing with each case."""
        new = finding(check_id, evidence, severity)
        self.report.skipped.pop(check_id, None)
        for index, item in enumerate(self.report.findings):
            if (item.check, item.severity) == (new.check, new.severity):
                self.report.findings[index] = dataclasses.replace(item, evidence=f"{item.evidence}; {evidence}")
                return
        self.report.findings.append(new)

    def judged(self, check_id: str) -> bool:
        return check_id in self.report.passed or any(item.check == check_id for item in self.report.findings)

    def passed(self, check_id: str, evidence: str) -> None:
        """A pass, unless the check already found something or was skipped (each check is in one list)."""
        if not self.judged(check_id) and check_id not in self.report.skipped:
            self.report.passed[check_id] = evidence

    def skipped(self, check_id: str, reason: str) -> None:
        if not self.judged(check_id):
            self.report.skipped.setdefault(check_id, reason)

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> Report:
        try:
            first = await self.request([*JSON_HEADERS, ("MCP-Protocol-Version", PROTOCOL_VERSION)], initialize())
        except Unreachable as exc:
            raise TargetUnreachable(str(exc)) from None
        if first.status == 200 and (first_id := first.header("mcp-session-id")):
            self.opened.append(_Session(first_id, []))
        self.check_missing(first)
        self.check_transport()
        await self.check_tls()
        session = await self.open_session(first)
        api_answer = first
        with self.unanswered("auth.valid"):
            api_answer = await self.check_valid(session, first)
        self.check_headers(api_answer)
        with self.unanswered("origin.foreign"):
            await self.check_origin(session)
        with self.unanswered("host.rebinding"):
            await self.check_host(session)
        with self.unanswered("cors.reflected"):
            await self.check_cors(session)
        with self.unanswered("auth.malformed"):
            await self.check_bad_credentials()
        with self.unanswered("session.strength"):
            await self.check_session_strength(session)
        with self.unanswered("session.binding"):
            await self.check_binding(session)
        with self.unanswered("mcp.version"):
            await self.check_version(session)
        await self.check_batch(session)
        await self.check_body(session)
        await self.check_burst(session)
        await self.close_sessions()
        for check_id in CHECKS:
            self.skipped(check_id, "not run")
        return self.report

    @contextlib.contextmanager
    def unanswered(self, check_id: str) -> Iterator[None]:
        """A request inside a check got no answer: the check is skipped, the run goes on."""
        try:
            yield
        except Unreachable as exc:
            self.skipped(check_id, f"no answer: {exc}")

    def check_missing(self, first: Response) -> None:
        if 200 <= first.status < 300:
            self.found("auth.missing", f"initialize without a credential answered {first.status}")
        elif first.status >= 500:
            self.found("auth.error", f"initialize without a credential answered {first.status}")
        elif first.status in (404, 405):
            note = f"initialize without a credential answered {first.status}: is URL an MCP endpoint?"
            self.passed("auth.missing", note)
        else:
            self.passed("auth.missing", f"initialize without a credential answered {first.status}")

    def check_transport(self) -> None:
        if self.target.scheme == "https":
            self.passed("transport.plaintext", "https")
        elif self.target.loopback:
            self.found("transport.plaintext", f"http:// on loopback ({self.target.host}): fine locally", Severity.INFO)
        else:
            self.found("transport.plaintext", f"http:// to {self.target.host}: credentials travel in clear")

    async def check_tls(self) -> None:
        if self.target.scheme != "https":
            self.skipped("tls.legacy", "not an https URL")
            return
        versions = await tls_versions(self.target, self.options.timeout)
        self.report.requests += len(versions)
        evidence = ", ".join(
            f"{name} {'accepted' if ok else 'refused' if ok is False else 'not testable here'}"
            for name, ok in versions.items()
        )
        legacy = [name for name in ("TLS 1.0", "TLS 1.1") if versions.get(name)]
        if legacy:
            self.found("tls.legacy", evidence)
        else:
            self.passed("tls.legacy", evidence)

    async def open_session(self, first: Response) -> _Session | None:
        """A session on the credential given (or on none, when the server wants none)."""
        auth = self.auth(self.options.token)
        if not auth and not 200 <= first.status < 300:
            return None
        headers = [*JSON_HEADERS, *auth, ("MCP-Protocol-Version", PROTOCOL_VERSION)]
        try:
            answer = await self.request(headers, initialize())
        except Unreachable:
            return None
        if answer.status != 200:
            self.last_open = answer
            return None
        session = _Session(answer.header("mcp-session-id"), auth)
        if session.id is not None:
            self.opened.append(session)
        with contextlib.suppress(Unreachable):
            await self.request(session.headers(), json.dumps(rpc("notifications/initialized", None)).encode())
        return session

    async def check_valid(self, session: _Session | None, first: Response) -> Response:
        if self.options.token is None:
            self.skipped("auth.valid", "no --token given")
            return first
        if session is None:
            status = (self.last_open or first).status
            self.found("auth.valid", f"initialize with the token answered {status}")
            return first
        answer = await self.request(session.headers(), json.dumps(rpc("tools/list", 2)).encode())
        if answer.status == 200 and b'"result"' in answer.body:
            self.passed("auth.valid", "initialize then tools/list answered 200 with a result")
        else:
            self.found("auth.valid", f"tools/list in the new session answered {answer.status}")
        return answer

    def check_headers(self, answer: Response) -> None:
        headers = dict(answer.headers)
        problems = dict(header_problems(headers, https=self.target.scheme == "https"))
        for check_id in ("headers.nosniff", "headers.frame", "headers.referrer", "headers.cache", "headers.xss"):
            if check_id in problems:
                self.found(check_id, f"answer {answer.status}: {problems[check_id]}")
            else:
                self.passed(check_id, f"answer {answer.status}")
        if self.target.scheme != "https":
            self.skipped("headers.hsts", "HSTS is only meaningful over https")
        elif "headers.hsts" in problems:
            self.found("headers.hsts", problems["headers.hsts"])
        else:
            self.passed("headers.hsts", headers.get("strict-transport-security", ""))

    async def check_origin(self, session: _Session | None) -> None:
        auth = session.auth if session else []
        headers = [*JSON_HEADERS, *auth, ("Origin", FOREIGN_ORIGIN), ("MCP-Protocol-Version", PROTOCOL_VERSION)]
        answer = await self.request(headers, initialize())
        self.track(answer, auth)
        self.judge_refusal("origin.foreign", answer, f"Origin: {FOREIGN_ORIGIN}", session, (403,))
        if (problem := cors_problem(FOREIGN_ORIGIN, dict(answer.headers))) is not None:
            self.found(*problem)

    async def check_host(self, session: _Session | None) -> None:
        auth = session.auth if session else []
        host = f"{FOREIGN_HOST}:{self.target.port}"
        headers = [*JSON_HEADERS, *auth, ("MCP-Protocol-Version", PROTOCOL_VERSION)]
        answer = await self.request(headers, initialize(), host=host)
        self.track(answer, auth)
        self.judge_refusal("host.rebinding", answer, f"Host: {host}", session, (400, 403, 421))

    def judge_refusal(
        self, check_id: str, answer: Response, sent: str, session: _Session | None, wanted: tuple[int, ...]
    ) -> None:
        if 200 <= answer.status < 300:
            self.found(check_id, f"{sent} answered {answer.status}")
        elif answer.status in wanted:
            self.passed(check_id, f"{sent} answered {answer.status}")
        elif answer.status == 401 and (session is None or not session.auth):
            self.skipped(check_id, f"{sent} answered 401: not verifiable without --token")
        else:
            self.found(check_id, f"{sent} answered {answer.status}, not {'/'.join(map(str, wanted))}", Severity.LOW)

    def track(self, answer: Response, auth: list[tuple[str, bytes | str]]) -> None:
        """Remember a session a check opened by accident, to close it at the end."""
        if answer.status == 200 and (session_id := answer.header("mcp-session-id")):
            self.opened.append(_Session(session_id, auth))

    async def check_cors(self, session: _Session | None) -> None:
        auth = session.auth if session else []
        origins = lookalike_origins(self.target.scheme, self.target.host)
        for origin in origins:
            preflight: list[tuple[str, bytes | str]] = [
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, content-type, mcp-session-id"),
            ]
            for method, headers, body in (
                ("OPTIONS", preflight, b""),
                (
                    "POST",
                    [*JSON_HEADERS, *auth, ("Origin", origin), ("MCP-Protocol-Version", PROTOCOL_VERSION)],
                    json.dumps(rpc("ping", 9)).encode(),
                ),
            ):
                answer = await self.request(headers, body, method=method)
                if (problem := cors_problem(origin, dict(answer.headers))) is not None:
                    self.found(problem[0], f"{method}: {problem[1]}")
        for check_id in ("cors.reflected", "cors.credentials", "cors.wildcard"):
            self.passed(check_id, f"look-alike origins not allowed: {', '.join(origins)}")

    async def check_bad_credentials(self) -> None:
        base = [*JSON_HEADERS, ("MCP-Protocol-Version", PROTOCOL_VERSION)]
        errors: list[str] = []

        async def judge(check_id: str, label: str, *values: bytes) -> None:
            credentials: list[tuple[str, bytes | str]] = [("Authorization", value) for value in values]
            try:
                answer = await self.request([*base, *credentials], initialize())
            except Unreachable as exc:
                errors.append(f"{label}: {exc}")
                return
            self.track(answer, credentials)
            if 200 <= answer.status < 300:
                self.found(check_id, f"Authorization {label} answered {answer.status}")
            elif answer.status >= 500:
                errors.append(f"{label}: {answer.status}")

        for label, value in bad_credentials().items():
            await judge("auth.malformed", repr(label), value)
        await judge("auth.invalid", "Bearer <random>", f"Bearer {secrets.token_urlsafe(32)}".encode())
        now = int(time.time())
        expired = {"sub": "probe", "iat": now - 7200, "exp": now - 3600}
        await judge("auth.expired", "expired HS256 JWT", f"Bearer {jwt(expired)}".encode())
        valid_looking = {"sub": "probe", "iat": now, "exp": now + 3600}
        await judge("auth.expired", "alg none JWT", f"Bearer {jwt(valid_looking, unsigned=True)}".encode())
        if self.options.token is None:
            self.skipped("auth.duplicate", "no --token given")
        else:
            valid, invalid = f"Bearer {self.options.token}".encode(), f"Bearer {secrets.token_urlsafe(32)}".encode()
            await judge("auth.duplicate", "twice (the token second)", invalid, valid)
            await judge("auth.duplicate", "twice (the token first)", valid, invalid)
            self.passed("auth.duplicate", "two Authorization headers, the token first or second, were refused")
        if errors:
            self.found("auth.error", "; ".join(errors))
        else:
            self.passed("auth.error", "every bad credential got a 4xx")
        self.passed("auth.malformed", f"refused: {', '.join(bad_credentials())}")
        self.passed("auth.invalid", "a random bearer token was refused")
        self.passed("auth.expired", "an expired HS256 JWT and an alg none JWT were refused")

    async def check_session_strength(self, session: _Session | None) -> None:
        if session is None or session.id is None:
            self.skipped("session.strength", "no session could be opened" if session is None else "no session ids")
            return
        ids = [session.id]
        for _ in range(SESSION_SAMPLES - 1):
            answer = await self.request(
                [*JSON_HEADERS, *session.auth, ("MCP-Protocol-Version", PROTOCOL_VERSION)], initialize()
            )
            self.track(answer, session.auth)
            if (session_id := answer.header("mcp-session-id")) is not None:
                ids.append(session_id)
        problems = session_id_problems(ids)
        bits = min(session_bits(item) for item in ids)
        summary = f"{len(ids)} ids, {min(map(len, ids))}-{max(map(len, ids))} chars, about {bits:.0f} bits"
        if problems:
            self.found("session.strength", f"{summary}: {'; '.join(problems)}")
        else:
            self.passed("session.strength", summary)

    async def check_binding(self, session: _Session | None) -> None:
        if session is None or session.id is None or not session.auth:
            self.skipped("session.binding", "needs --token and a session id")
            self.skipped("session.hijack", "needs --token, --second-token and a session id")
            return
        bare = _Session(session.id, [])
        answer = await self.request(bare.headers(), json.dumps(rpc("tools/list", 3)).encode())
        if 200 <= answer.status < 300:
            self.found("session.binding", f"tools/list with the session id and no credential answered {answer.status}")
        else:
            self.passed("session.binding", f"the session id alone answered {answer.status}")
        if self.options.second_token is None:
            self.skipped("session.hijack", "no --second-token given")
            return
        other = _Session(session.id, self.auth(self.options.second_token))
        answer = await self.request(other.headers(), json.dumps(rpc("tools/list", 4)).encode())
        if 200 <= answer.status < 300:
            self.found("session.hijack", f"the session under the second credential answered {answer.status}")
        else:
            self.passed("session.hijack", f"the session under the second credential answered {answer.status}")

    async def check_version(self, session: _Session | None) -> None:
        if session is None:
            self.skipped("mcp.version", "no session could be opened")
            return
        body = json.dumps(rpc("tools/list", 5)).encode()
        answer = await self.request(session.headers(version=BAD_PROTOCOL_VERSION), body)
        sent = f"MCP-Protocol-Version: {BAD_PROTOCOL_VERSION}"
        if answer.status == 400:
            self.passed("mcp.version", f"{sent} answered 400")
        else:
            self.found("mcp.version", f"{sent} answered {answer.status}")

    async def check_batch(self, session: _Session | None) -> None:
        if session is None:
            self.skipped("jsonrpc.batch", "no session could be opened")
            return
        body = json.dumps([rpc("ping", 6), rpc("ping", 7)]).encode()
        try:
            answer = await self.request(session.headers(), body)
        except Unreachable as exc:
            self.found("jsonrpc.batch", f"a batch of two pings: {exc}")
            return
        evidence = f"a batch of two pings answered {answer.status}"
        if 400 <= answer.status < 500 or (answer.status == 200 and b"jsonrpc" in answer.body):
            self.passed("jsonrpc.batch", evidence)
        else:
            self.found("jsonrpc.batch", evidence)

    async def check_body(self, session: _Session | None) -> None:
        auth = session.headers() if session else [*JSON_HEADERS, ("MCP-Protocol-Version", PROTOCOL_VERSION)]
        size = self.options.body_bytes
        filler = "x" * max(0, size - 100)
        body = json.dumps(rpc("tools/list", 8, {"padding": filler})).encode()
        sent = f"a {_size(len(body))} JSON body"
        try:
            answer = await self.request(auth, body)
        except Unreachable as exc:
            self.passed("limits.body", f"{sent}: the connection was closed ({exc})")
            return
        if answer.cut_short:
            self.passed("limits.body", f"{sent}: the server hung up before taking it all")
        elif answer.status == 413:
            self.passed("limits.body", f"{sent} answered 413")
        elif answer.status == 401 and (session is None or not session.auth):
            self.skipped("limits.body", f"{sent} answered 401: not verifiable without --token")
        else:
            self.found("limits.body", f"{sent} answered {answer.status}, not 413")

    async def check_burst(self, session: _Session | None) -> None:
        count = self.options.burst
        if count <= 0:
            self.skipped("ratelimit.burst", "--burst 0")
            return
        headers = session.headers() if session else [*JSON_HEADERS, ("MCP-Protocol-Version", PROTOCOL_VERSION)]
        body = json.dumps(rpc("ping", 10)).encode()
        statuses: collections.Counter[str] = collections.Counter()
        remaining = count
        limited = asyncio.Event()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and not limited.is_set():
                remaining -= 1
                try:
                    answer = await self.request(headers, body, patient=False)
                except Unreachable:
                    statuses["no answer"] += 1
                    continue
                statuses[str(answer.status)] += 1
                if answer.status == 429:
                    limited.set()

        await asyncio.gather(*(worker() for _ in range(min(_BURST_CONCURRENCY, count))))
        sent = sum(statuses.values())
        tally = ", ".join(f"{status} x{number}" for status, number in sorted(statuses.items()))
        if limited.is_set():
            self.passed("ratelimit.burst", f"429 after at most {sent} requests ({tally})")
        else:
            self.found("ratelimit.burst", f"{sent} requests in a burst, no 429 ({tally})")

    async def close_sessions(self) -> None:
        for session in self.opened:
            try:
                await self.request(session.headers(), method="DELETE")
            except Unreachable:
                continue


def _retry_after(value: str | None) -> float:
    """Seconds to wait before asking again: the server's Retry-After, within 0.2 and MAX_RETRY_WAIT."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.2), MAX_RETRY_WAIT)


def _size(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MiB" if count >= 1024 * 1024 else f"{count} bytes"


async def run(target: Target, options: Options) -> Report:
    """Every check against `target`; raises TargetUnreachable when the first request gets no answer."""
    return await _Probe(target, options).run()
