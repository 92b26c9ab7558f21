"""The pipeline admits on its fast path only what its layers admit, with the same effects.

Two stacks are built from one config: the pipeline as served, and its layers alone. The
same request sequences go to both; answers, what reached the endpoint, the security
counters and the audit events must match, and the fast path must really be taken for
repeated, admitted requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_barbican.audit import AuditTrail
from mcp_barbican.audit.sinks import Record
from mcp_barbican.config import ProxyConfig, validate_model
from mcp_barbican.security.auth import Authenticate, StaticToken, StaticTokens, digest
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.pipeline import Pipeline
from mcp_barbican.security.principal import Principal
from mcp_barbican.server.shields import Shields
from mcp_barbican.storage import TokenRecord
from mcp_barbican.types import ASGIApp, Receive, Scope, Send
from tests.security.asgi import call, make_scope, ok_app

TOKENS = {
    "good": "good-token-0123456789",
    "other": "other-token-0123456789",  # reaches another MCP only
    "expired": "expired-token-0123456789",
    "issued": "issued-token-0123456789",
}
CONFIG: dict[str, Any] = {
    "server": {"storage": {"type": "memory"}},
    "mcps": [
        {
            "id": "m",
            "command": "true",
            "auth": {
                "type": "token",
                "tokens": [
                    {"id": "good", "token": TOKENS["good"]},
                    {"id": "other", "token": TOKENS["other"], "mcps": ["elsewhere"]},
                    {"id": "expired", "token": TOKENS["expired"], "expires_at": "2020-01-01T00:00:00Z"},
                ],
            },
            "security": {
                "ip_blacklist": ["10.9.0.0/16"],
                "rate_limit": {"per_ip_requests_per_minute": 1, "per_ip_burst_size": 4},
                "cors": {"enabled": True, "allowed_origins": ["https://app.example.com"]},
            },
        }
    ],
}
IPS = ["127.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.1.1", "2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:2::1"]
Credential = str | tuple[str, ...] | None
CREDENTIALS: list[Credential] = [None, "Bearer " + TOKENS["good"], "Bearer " + TOKENS["other"]]
CREDENTIALS += ["Bearer " + TOKENS["expired"], "Bearer " + TOKENS["issued"], "Bearer nope", "Basic x", "Bearer"]
# Repeated Authorization headers (a tuple: sent in this order) are ambiguous, refused even once the first is known.
CREDENTIALS += [("Bearer " + TOKENS["good"], "Bearer nope"), ("Bearer " + TOKENS["good"],) * 2]
CREDENTIALS += [("Bearer nope", "Bearer " + TOKENS["good"])]
ORIGINS = [None, "https://app.example.com", "https://evil.example.net"]


class Recording:
    """An audit sink that keeps what it is given."""

    name = "recording"

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def write(self, batch: list[Record]) -> None:
        self.records.extend(batch)

    async def aclose(self) -> None:
        return None


class Stack:
    """One MCP's guarded app, over an endpoint that records what reaches it."""

    def __init__(self, *, layers_only: bool) -> None:
        self.sink = Recording()
        self.audit = AuditTrail([self.sink])
        self.shields = Shields(validate_model(ProxyConfig, CONFIG), audit=self.audit)
        self.reached: list[tuple[list[tuple[bytes, bytes]], Principal | None]] = []
        guarded = self.shields.protect(self.endpoint, self.shields.config.mcps[0]).app
        assert isinstance(guarded, Pipeline)
        self.pipeline = guarded
        self.app: ASGIApp = guarded.layers if layers_only else guarded

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append((list(scope["headers"]), scope.get(PRINCIPAL_KEY)))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def request(self, ip: str, credential: Credential, origin: str | None, method: str = "POST") -> Any:
        headers = [("host", "127.0.0.1:6001"), ("content-type", "application/json")]
        if credential is not None:
            values = (credential,) if isinstance(credential, str) else credential
            headers += [("authorization", value) for value in values]
        if origin is not None:
            headers.append(("origin", origin))
        scope = make_scope(method, "/mcp/m", headers, client=(ip, 40000))
        scope[CLIENT_IP_KEY] = ip
        sent = await call(self.app, scope, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
        return sent.status, sorted(sent.headers.items()), sent.body


def issue(stack: Stack, *, revoked: bool = False) -> None:
    sha256 = hashlib.sha256(TOKENS["issued"].encode()).hexdigest()
    record = TokenRecord(id="issued", sha256=sha256, created_at=0.0, revoked_at=1.0 if revoked else None)
    stack.shields.issued.put(record)


def counted(stack: Stack) -> dict[str, Any]:
    counters = asdict(stack.shields.counters)
    counters["last_violation"] = counters["last_violation"] is not None  # when differs by microseconds
    return counters


def events(stack: Stack) -> list[dict[str, Any]]:
    volatile = {"timestamp", "request_id", "latency_ms", "expires_at", "retry_after"}  # clock readings
    kept = []
    for record in stack.sink.records:
        details = {k: v for k, v in (record.get("details") or {}).items() if k not in volatile}
        kept.append({**{k: v for k, v in record.items() if k not in volatile}, "details": details})
    return kept


Step = tuple[int, int, int]
steps = st.lists(
    st.tuples(st.integers(0, len(IPS) - 1), st.integers(0, len(CREDENTIALS) - 1), st.integers(0, len(ORIGINS) - 1)),
    min_size=1,
    max_size=40,
)


async def run_both(plan: list[Step | str]) -> tuple[Stack, Stack]:
    """The same plan through the pipeline and through the layers alone; asserts every answer matches."""
    served, layers = Stack(layers_only=False), Stack(layers_only=True)
    for stack in (served, layers):
        stack.audit.start()
    for step in plan:
        if step == "issue" or step == "revoke":
            issue(served, revoked=step == "revoke")
            issue(layers, revoked=step == "revoke")
            continue
        assert not isinstance(step, str)
        ip, credential, origin = IPS[step[0]], CREDENTIALS[step[1]], ORIGINS[step[2]]
        assert await served.request(ip, credential, origin) == await layers.request(ip, credential, origin), step
    for stack in (served, layers):
        await stack.audit.aclose()
    assert served.reached == layers.reached
    assert counted(served) == counted(layers)
    assert events(served) == events(layers)
    return served, layers


GOOD, LOOPBACK, DENIED, EVIL, REPEATED = 1, 0, 3, 2, 8


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
@example(plan=[(LOOPBACK, GOOD, 0), (DENIED, GOOD, 0)]).via("a remembered credential from a denied address")
@example(plan=[(LOOPBACK, GOOD, 0), (LOOPBACK, GOOD, EVIL), (LOOPBACK, GOOD, 1)]).via("browser requests")
@example(plan=[(LOOPBACK, GOOD, 0)] * 6).via("the per-IP burst spent on the fast path")
@example(plan=[(LOOPBACK, GOOD, 0), (1, GOOD, 0), (LOOPBACK, 2, 0), (LOOPBACK, 3, 0)]).via("scope and expiry")
@example(plan=[(LOOPBACK, GOOD, 0), (LOOPBACK, REPEATED, 0)]).via("a known credential sent twice with another")
async def test_the_fast_path_decides_every_request_as_the_layers_do(plan: list[Step]) -> None:
    await run_both(list(plan))


@pytest.mark.anyio
async def test_a_repeated_credential_header_is_refused_on_both_paths() -> None:
    served, _ = await run_both([(LOOPBACK, GOOD, 0), (LOOPBACK, REPEATED, 0)])
    status, _, body = await served.request("127.0.0.1", CREDENTIALS[REPEATED], None)
    assert CREDENTIALS[REPEATED] == ("Bearer " + TOKENS["good"], "Bearer nope")
    assert status == 400, "the fast path must not admit the first value it remembers"
    assert b"more than one Authorization header" in body


@pytest.mark.anyio
async def test_issued_tokens_and_their_revocation_count_from_the_next_request() -> None:
    issued = (0, CREDENTIALS.index("Bearer " + TOKENS["issued"]), 0)
    served, _ = await run_both([issued, "issue", issued, issued, "revoke", issued])
    statuses = [status for status, _, _ in [await served.request("127.0.0.1", CREDENTIALS[issued[1]], None)]]
    assert statuses == [401], "a revoked token is refused, though it was accepted (and remembered) before"


@pytest.mark.anyio
async def test_repeated_admitted_requests_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(layers_only=False)
    through_layers: list[Scope] = []
    layers = stack.pipeline.layers

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        through_layers.append(scope)
        await layers(scope, receive, send)

    monkeypatch.setattr(stack.pipeline, "layers", counting)
    good = CREDENTIALS[1]
    answers = [await stack.request("127.0.0.1", good, None) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert len(through_layers) == 1, "only the first sight of the credential needs the layers"
    assert (await stack.request("127.0.0.1", good, None))[0] == 429, "the per-IP burst of 4 is spent"
    assert len(through_layers) == 2, "a refusal is answered by the layers"
    assert (await stack.request("10.0.0.2", good, "https://app.example.com"))[0] == 200
    assert len(through_layers) == 3, "browser requests (with Origin) go through CORS"
    headers, principal = stack.reached[-1]
    assert principal is not None and principal.id == "token:good"
    assert all(name != b"authorization" for name, _ in headers), "the credential never goes further"


@pytest.mark.anyio
async def test_a_remembered_credential_is_forgotten_when_it_expires() -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    tokens = StaticTokens([StaticToken("soon", digest("soon-token-0123456789"), expires_at=expires)])

    layer = Authenticate(
        ok_app,
        authenticator=tokens,
        header="Authorization",
        prefix="Bearer",
        mcp_id="m",
        counters=SecurityCounters(),
        challenge=lambda failure, scope: "Bearer",
    )
    raw = b"Bearer soon-token-0123456789"
    assert layer.remembered(raw, 0.0) is None, "nothing is remembered before the layers accepted it"
    sent = await call(layer, make_scope("POST", "/mcp/m", [("authorization", raw.decode())]))
    assert sent.status == 200
    now = expires.timestamp()
    assert layer.remembered(raw, now - 1) is not None
    assert layer.remembered(raw, now) is None, "an expired token is decided in full again"
    tokens.revoke(digest("soon-token-0123456789"))
    assert layer.remembered(raw, now - 1) is None, "a revocation forgets every remembered verdict"


@pytest.mark.parametrize(
    ("auth", "guarded"),
    [
        ({"type": "token", "token": TOKENS["good"]}, True),
        ({"type": "none"}, True),
        ({"type": "jwt", "jwt": {"secret": "s" * 32, "algorithms": ["HS256"]}}, False),
    ],
    ids=["static-token", "no-auth", "jwt"],
)
def test_the_fast_path_stands_only_where_it_can_admit(auth: dict[str, Any], guarded: bool) -> None:
    mcp = {**CONFIG["mcps"][0], "auth": auth}
    shields = Shields(validate_model(ProxyConfig, {**CONFIG, "mcps": [mcp]}))
    app = shields.protect(ok_app, shields.config.mcps[0]).app
    assert isinstance(app, Pipeline)
    assert app.fast_path is guarded, "JWTs are verified every time, so a fast path would only add a try"


@pytest.mark.anyio
@pytest.mark.parametrize("layers_only", [False, True], ids=["pipeline", "layers"])
async def test_one_slash_64_shares_one_per_ip_bucket(layers_only: bool) -> None:
    stack = Stack(layers_only=layers_only)
    good = CREDENTIALS[1]
    hosts = ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3", "2001:db8:0:1::4"]
    assert [(await stack.request(ip, good, None))[0] for ip in hosts] == [200] * 4
    assert (await stack.request("2001:db8:0:1::5", good, None))[0] == 429, "the /64's burst of 4 is spent"
    assert (await stack.request("2001:db8:0:2::1", good, None))[0] == 200, "another /64 has its own bucket"


def test_the_limiter_takes_the_prefix_of_its_own_security_block() -> None:
    own = {**CONFIG["mcps"][0]["security"], "auth_failure_ban": {"ipv6_prefix": 56}}
    mcps = [CONFIG["mcps"][0], {**CONFIG["mcps"][0], "id": "n", "security": own}]
    shields = Shields(validate_model(ProxyConfig, {**CONFIG, "mcps": mcps}))
    config = shields.config
    prefixes = [shields.limiter(config.effective_security(mcp), mcp.id) for mcp in config.mcps]
    assert [limiter.ipv6_prefix for limiter in prefixes if limiter is not None] == [64, 56]
