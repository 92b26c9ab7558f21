"""CORS: origin decisions and preflight verdicts from tables, and the layer driven in-process."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_barbican.config import CorsConfig
from mcp_barbican.security.cors import CORS, Origin, OriginPolicy, PreflightPolicy, parse_origin
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.types import Message, Receive, Scope, Send
from tests.security.asgi import Sent, call, make_scope, ok_app

ORIGINS = CorsConfig(
    allowed_origins=(
        "https://app.example.com",
        "*.example.com",
        "http://localhost:5173",
        "https://api.example.org:8443",
        "https://*.tenant.example.net:8443",
        "http://127.0.0.1:3000",
        "http://[::1]:3000",
        "https://*.0.0.1",
    )
)
POLICY = OriginPolicy.build(ORIGINS)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param("https://app.example.com", True, id="exact"),
        pytest.param("HTTPS://APP.Example.COM", True, id="case-insensitive"),
        pytest.param("https://app.example.com:443", True, id="default-port-folded"),
        pytest.param("https://a.example.com", True, id="wildcard-one-label"),
        pytest.param("https://a.b.example.com", True, id="wildcard-two-labels"),
        pytest.param("https://example.com", False, id="wildcard-not-the-apex"),
        pytest.param("https://evil-example.com", False, id="wildcard-no-label-boundary"),
        pytest.param("https://evilexample.com", False, id="wildcard-suffix-without-dot"),
        pytest.param("https://example.com.evil.net", False, id="wildcard-as-prefix"),
        pytest.param("https://a.example.com.evil.net", False, id="wildcard-subdomain-as-prefix"),
        pytest.param("http://a.example.com", False, id="wildcard-other-scheme"),
        pytest.param("https://a.example.com:8443", False, id="wildcard-other-port"),
        pytest.param("https://.example.com", False, id="empty-label"),
        pytest.param("https://a..example.com", False, id="empty-inner-label"),
        pytest.param("http://app.example.com", False, id="exact-other-scheme"),
        pytest.param("https://app.example.com:8443", False, id="exact-other-port"),
        pytest.param("http://localhost:5173", True, id="explicit-port"),
        pytest.param("http://localhost", False, id="explicit-port-missing"),
        pytest.param("http://localhost:5174", False, id="explicit-port-differs"),
        pytest.param("http://localhost:80", False, id="default-port-is-not-5173"),
        pytest.param("https://api.example.org:8443", True, id="non-default-port"),
        pytest.param("https://api.example.org", False, id="non-default-port-missing"),
        pytest.param("https://x.tenant.example.net:8443", True, id="wildcard-with-port"),
        pytest.param("https://x.tenant.example.net", False, id="wildcard-with-port-missing"),
        pytest.param("https://tenant.example.net:8443", False, id="wildcard-with-port-apex"),
        pytest.param("http://127.0.0.1:3000", True, id="ipv4"),
        pytest.param("http://[::1]:3000", True, id="ipv6"),
        pytest.param("http://[0:0:0:0:0:0:0:1]:3000", True, id="ipv6-uncompressed"),
        pytest.param("https://127.0.0.1", False, id="ip-never-matches-a-wildcard"),
        pytest.param("http://[::1%25eth0]:3000", False, id="ipv6-zone"),
        pytest.param("http://[::1:3000", False, id="ipv6-unclosed"),
        pytest.param("null", False, id="null"),
        pytest.param("NULL", False, id="null-uppercase"),
        pytest.param("", False, id="empty"),
        pytest.param("https://app.example.com/", False, id="trailing-slash"),
        pytest.param("https://app.example.com/path", False, id="path"),
        pytest.param("https://app.example.com?x=1", False, id="query"),
        pytest.param("https://app.example.com#f", False, id="fragment"),
        pytest.param("https://user@app.example.com", False, id="userinfo"),
        pytest.param("https://app.example.com:", False, id="empty-port"),
        pytest.param("https://app.example.com:0", False, id="port-zero"),
        pytest.param("https://app.example.com:65536", False, id="port-too-large"),
        pytest.param("https://app.example.com:44x", False, id="port-not-numeric"),
        pytest.param(" https://app.example.com", False, id="leading-space"),
        pytest.param("https://app .example.com", False, id="inner-space"),
        pytest.param("https://app.exämple.com", False, id="non-ascii"),
        pytest.param("app.example.com", False, id="no-scheme"),
        pytest.param("//app.example.com", False, id="scheme-relative"),
        pytest.param("file://", False, id="file"),
        pytest.param("https://*.example.com", False, id="literal-wildcard"),
    ],
)
def test_origin_decisions(origin: str, allowed: bool) -> None:
    assert POLICY.allows(origin) is allowed


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        pytest.param("https://a.com:443", Origin("https", "a.com", None), id="https-default"),
        pytest.param("http://a.com:80", Origin("http", "a.com", None), id="http-default"),
        pytest.param("http://a.com:443", Origin("http", "a.com", 443), id="https-port-on-http"),
        pytest.param("https://A.com.", Origin("https", "a.com.", None), id="fqdn-dot-kept"),
        pytest.param("chrome-extension://abcdef", Origin("chrome-extension", "abcdef", None), id="other-scheme"),
        pytest.param("http://[0::1]:8080", Origin("http", "[::1]", 8080), id="ipv6-compressed"),
        pytest.param("null", None, id="null"),
    ],
)
def test_parse_origin(value: str, parsed: Origin | None) -> None:
    assert parse_origin(value) == parsed


def test_star_admits_any_well_formed_origin_but_never_null() -> None:
    policy = OriginPolicy.build(CorsConfig(allowed_origins=("*",)))
    assert policy.any
    assert policy.allows("https://anything.test")
    assert policy.allows("http://10.0.0.1:8080")
    assert not policy.allows("null")
    assert not policy.allows("https://a.test/path")


def test_a_disabled_config_admits_nothing() -> None:
    policy = OriginPolicy.build(CorsConfig(enabled=False, allowed_origins=("*", "https://a.test")))
    assert not policy.any
    assert not policy.allows("https://a.test")


def test_no_origins_configured_admits_nothing() -> None:
    assert not OriginPolicy.build(CorsConfig()).allows("https://a.test")


LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(LABEL)
def test_every_real_subdomain_is_admitted(label: str) -> None:
    assert POLICY.allows(f"https://{label}.example.com")
    assert POLICY.allows(f"https://{label}.x.example.com")


@given(LABEL)
def test_look_alikes_are_refused(label: str) -> None:
    assert not POLICY.allows(f"https://{label}example.com")
    assert not POLICY.allows(f"https://{label}-example.com")
    assert not POLICY.allows(f"https://example.com.{label}")
    assert not POLICY.allows(f"https://{label}.example.com.{label}")
    assert not POLICY.allows(f"http://{label}.example.com")


@given(st.text())
def test_any_text_is_decided_without_error(value: str) -> None:
    assert isinstance(POLICY.allows(value), bool)
    parsed = parse_origin(value)
    assert parsed is None or value.isascii()


# ---------------------------------------------------------------------------------------------
# Preflight verdicts

PREFLIGHT_CONFIG = CorsConfig(
    allowed_origins=("https://app.example.com",),
    allowed_methods=("GET", "POST"),
    allowed_headers=("Content-Type", "Authorization", "Mcp-Session-Id"),
)
PREFLIGHT = PreflightPolicy.build(PREFLIGHT_CONFIG)


@pytest.mark.parametrize(
    ("origin", "method", "headers", "refusal"),
    [
        pytest.param("https://app.example.com", "POST", None, None, id="allowed-no-headers"),
        pytest.param("https://app.example.com", "GET", "", None, id="allowed-empty-headers"),
        pytest.param(
            "https://app.example.com", "POST", "content-type,authorization,mcp-session-id", None, id="allowed-headers"
        ),
        pytest.param("https://app.example.com", "POST", " Content-Type , AUTHORIZATION ", None, id="headers-any-case"),
        pytest.param("https://app.example.com", "POST", "content-type,,", None, id="empty-items-ignored"),
        pytest.param("https://evil.example.com", "POST", None, "origin", id="origin-refused"),
        pytest.param("null", "POST", None, "origin", id="null-refused"),
        pytest.param("https://app.example.com", "DELETE", None, "method", id="method-not-listed"),
        pytest.param("https://app.example.com", "post", None, "method", id="method-case-sensitive"),
        pytest.param("https://app.example.com", "POST", "content-type, x-debug", "x-debug", id="header-not-listed"),
        pytest.param("https://app.example.com", "POST", "content type", "malformed", id="header-malformed"),
    ],
)
def test_preflight_verdicts(origin: str, method: str, headers: str | None, refusal: str | None) -> None:
    verdict = PREFLIGHT.refusal(origin, method, headers)
    if refusal is None:
        assert verdict is None
    else:
        assert verdict is not None and refusal in verdict


def test_a_refusal_quotes_a_long_value_shortened() -> None:
    verdict = PREFLIGHT.refusal("https://" + "a" * 5000 + ".test", "POST", None)
    assert verdict is not None and len(verdict) < 200


# ---------------------------------------------------------------------------------------------
# The layer


def header_values(sent: Sent, name: str) -> list[str]:
    return [v.decode() for k, v in sent.messages[0].get("headers", []) if k.decode().lower() == name]


def cors_headers(sent: Sent) -> dict[str, str]:
    return {k: v for k, v in sent.headers.items() if k.startswith("access-control-")}


def layer(app: Any = ok_app, counters: SecurityCounters | None = None, **config: Any) -> CORS:
    settings: dict[str, Any] = {"allowed_origins": ("https://app.example.com",), **config}
    return CORS(app, config=CorsConfig(**settings), counters=counters or SecurityCounters())


async def must_not_run(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("a preflight must be answered by the CORS layer")


def preflight(origin: str = "https://app.example.com", method: str = "POST", headers: str | None = None) -> Scope:
    fields = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if headers is not None:
        fields.append(("Access-Control-Request-Headers", headers))
    return make_scope("OPTIONS", "/mcp/demo", fields)


@pytest.mark.anyio
async def test_a_request_without_origin_passes_untouched() -> None:
    plain = await call(ok_app, make_scope("POST", "/mcp/demo"), b"hello")
    sent = await call(layer(), make_scope("POST", "/mcp/demo"), b"hello")
    assert sent.messages == plain.messages


@pytest.mark.anyio
async def test_an_allowed_preflight_is_answered_before_the_inner_layers() -> None:
    sent = await call(layer(must_not_run), preflight(headers="content-type, mcp-session-id"))
    assert sent.status == 204
    assert sent.body == b""
    assert "content-length" not in sent.headers
    assert cors_headers(sent) == {
        "access-control-allow-origin": "https://app.example.com",
        "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
        "access-control-allow-headers": "Content-Type, Authorization, Mcp-Session-Id, MCP-Protocol-Version, "
        "Last-Event-ID",
        "access-control-max-age": "600",
    }
    assert sent.headers["vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


@pytest.mark.anyio
async def test_a_preflight_with_credentials_says_so() -> None:
    sent = await call(layer(must_not_run, allow_credentials=True, max_age="1h"), preflight())
    assert sent.status == 204
    assert sent.headers["access-control-allow-credentials"] == "true"
    assert sent.headers["access-control-allow-origin"] == "https://app.example.com"
    assert sent.headers["access-control-max-age"] == "3600"


@pytest.mark.anyio
async def test_star_without_credentials_answers_star() -> None:
    sent = await call(layer(must_not_run, allowed_origins=("*",)), preflight(origin="https://any.test"))
    assert sent.status == 204
    assert sent.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in sent.headers


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        pytest.param(preflight(origin="https://evil.example.com"), "origin", id="origin"),
        pytest.param(preflight(origin="null"), "origin", id="null-origin"),
        pytest.param(preflight(method="PUT"), "method", id="method"),
        pytest.param(preflight(headers="content-type, x-secret"), "x-secret", id="header"),
    ],
)
@pytest.mark.anyio
async def test_a_refused_preflight_is_a_403_with_a_reason(scope: Scope, reason: str) -> None:
    counters = SecurityCounters()
    sent = await call(layer(must_not_run, counters), scope)
    assert sent.status == 403
    body = sent.json()
    assert body["error"] == "cors_rejected"
    assert reason in body["message"]
    assert cors_headers(sent) == {}
    assert "Origin" in sent.headers["vary"]
    assert counters.origin_rejected == 1
    assert counters.security_violations == 1


@pytest.mark.anyio
async def test_options_without_a_request_method_is_not_a_preflight() -> None:
    scope = make_scope("OPTIONS", "/mcp/demo", [("Origin", "https://app.example.com")])
    sent = await call(layer(), scope, b"inner")
    assert sent.status == 200
    assert sent.body == b"inner"
    assert sent.headers["access-control-allow-origin"] == "https://app.example.com"


@pytest.mark.anyio
async def test_an_allowed_request_gets_cors_headers_on_its_response() -> None:
    app = layer(exposed_headers=("X-Total-Count",), allow_credentials=True)
    sent = await call(app, make_scope("POST", "/mcp/demo", [("Origin", "https://app.example.com")]), b"ok")
    assert sent.status == 200
    assert sent.body == b"ok"
    assert cors_headers(sent) == {
        "access-control-allow-origin": "https://app.example.com",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "X-Total-Count, Mcp-Session-Id",
    }
    assert header_values(sent, "vary") == ["Origin"]


@pytest.mark.anyio
async def test_the_session_header_is_exposed_once() -> None:
    app = layer(exposed_headers=("mcp-session-id",))
    sent = await call(app, make_scope("GET", "/mcp/demo", [("Origin", "https://app.example.com")]))
    assert sent.headers["access-control-expose-headers"] == "mcp-session-id"


@pytest.mark.anyio
async def test_a_disallowed_request_passes_on_without_cors_headers() -> None:
    counters = SecurityCounters()
    sent = await call(
        layer(counters=counters), make_scope("POST", "/mcp/demo", [("Origin", "https://evil.test")]), b"x"
    )
    assert sent.status == 200
    assert cors_headers(sent) == {}
    assert header_values(sent, "vary") == ["Origin"]
    assert counters.security_violations == 0


def app_with_headers(*headers: tuple[bytes, bytes]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b""})

    return app


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://evil.test"])
@pytest.mark.anyio
async def test_the_inner_apps_cors_headers_are_replaced(origin: str) -> None:
    inner = app_with_headers(
        (b"Access-Control-Allow-Origin", b"*"), (b"access-control-allow-credentials", b"true"), (b"x-kept", b"1")
    )
    sent = await call(layer(inner), make_scope("GET", "/", [("Origin", origin)]))
    assert header_values(sent, "access-control-allow-origin") == ([origin] if origin.endswith("example.com") else [])
    assert header_values(sent, "access-control-allow-credentials") == []
    assert sent.headers["x-kept"] == "1"


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        pytest.param([b"Accept-Encoding"], ["Accept-Encoding", "Origin"], id="added"),
        pytest.param([b"accept-encoding, origin"], ["accept-encoding, origin"], id="present"),
        pytest.param([b"*"], ["*"], id="star"),
    ],
)
@pytest.mark.anyio
async def test_vary_is_merged(vary: list[bytes], expected: list[str]) -> None:
    inner = app_with_headers(*((b"vary", value) for value in vary))
    sent = await call(layer(inner), make_scope("GET", "/", [("Origin", "https://app.example.com")]))
    assert header_values(sent, "vary") == expected


@pytest.mark.anyio
async def test_a_streamed_body_passes_through_unbuffered() -> None:
    outer: list[Message] = []

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        assert len(outer) == 2, "the first event must reach the client before the stream ends"
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        outer.append(message)

    cors = layer(streaming)
    await cors(make_scope("GET", "/mcp/demo", [("Origin", "https://app.example.com")]), receive, send)
    assert [m.get("body") for m in outer[1:]] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert [m.get("more_body") for m in outer[1:]] == [True, False]
    assert (b"access-control-allow-origin", b"https://app.example.com") in outer[0]["headers"]


@pytest.mark.anyio
async def test_a_disabled_layer_is_transparent() -> None:
    app = layer(must_not_run, enabled=False)
    with pytest.raises(AssertionError, match="answered by the CORS layer"):
        await call(app, preflight())


@pytest.mark.anyio
async def test_other_scope_types_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await layer(inner)({"type": "lifespan"}, must_not_receive, must_not_send)
    await layer(inner)(
        {"type": "websocket", "headers": [(b"origin", b"https://evil.test")]}, must_not_receive, must_not_send
    )
    assert seen == ["lifespan", "websocket"]


async def must_not_receive() -> Message:
    raise AssertionError("unexpected receive")


async def must_not_send(message: Message) -> None:
    raise AssertionError("unexpected send")


def test_the_policy_is_exposed_for_the_origin_check() -> None:
    cors = layer(allowed_origins=("*.example.com",))
    assert cors.policy.allows("https://a.example.com")
    assert not cors.policy.allows("https://example.com")
    assert not cors.policy.any
