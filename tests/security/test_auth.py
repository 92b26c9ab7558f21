"""Static-token authentication decisions and the layer, in-process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_barbican.security.auth import (
    Authenticate,
    AuthFailure,
    StaticToken,
    StaticTokens,
    bearer_credential,
    digest,
)
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.principal import Principal
from mcp_barbican.types import Receive, Scope, Send
from tests.security.asgi import call, make_scope

NOW = datetime(2026, 11, 27, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Bearer abc", "abc", id="bearer"),
        pytest.param("bearer abc", "abc", id="scheme-case-insensitive"),
        pytest.param(None, AuthFailure("missing credentials"), id="absent"),
        pytest.param("", AuthFailure("missing credentials"), id="empty"),
        pytest.param("   ", AuthFailure("missing credentials"), id="blank"),
        pytest.param("Bearer", AuthFailure("malformed credentials"), id="scheme-only"),
        pytest.param("Bearer ", AuthFailure("malformed credentials"), id="scheme-space"),
        pytest.param("Basic x", AuthFailure("malformed credentials"), id="basic"),
        pytest.param("InvalidFormat", AuthFailure("malformed credentials"), id="no-scheme"),
        pytest.param("Bearer a b", AuthFailure("malformed credentials"), id="two-words"),
        pytest.param("Bearer tökén", AuthFailure("malformed credentials"), id="non-ascii"),
        pytest.param("Bearer a\tb", AuthFailure("malformed credentials"), id="control-char"),
    ],
)
def test_bearer_credential(value: str | None, expected: str | AuthFailure) -> None:
    assert bearer_credential(value, "Bearer") == expected


def test_an_empty_prefix_takes_the_whole_value() -> None:
    assert bearer_credential("raw-token", "") == "raw-token"


TOKENS = StaticTokens(
    [
        StaticToken("old", digest("old-token")),
        StaticToken("new", digest("new-token"), roles=("reader",), mcps=("a",)),
        StaticToken("gone", digest("gone-token"), expires_at=NOW - timedelta(seconds=1)),
    ],
    now=lambda: NOW,
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        ("old-token", Principal("token:old", "token")),
        ("new-token", Principal("token:new", "token", roles=("reader",), mcps=("a",))),
        ("gone-token", AuthFailure("token expired")),
        ("nope", AuthFailure("invalid token")),
        ("old-token ", AuthFailure("invalid token")),
    ],
)
async def test_static_tokens(credential: str, expected: Principal | AuthFailure) -> None:
    assert await TOKENS.authenticate(credential) == expected


@pytest.mark.anyio
async def test_a_revoked_token_is_refused() -> None:
    tokens = StaticTokens([StaticToken("t", digest("secret-value"))])
    tokens.revoke(digest("secret-value"))
    assert await tokens.authenticate("secret-value") == AuthFailure("token revoked")


async def _seen(scope: Scope, receive: Receive, send: Send) -> None:
    principal = scope[PRINCIPAL_KEY]
    headers = dict(scope["headers"])
    assert isinstance(principal, Principal)
    assert b"authorization" not in headers  # the credential never travels further
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": principal.id.encode()})


def _layer(counters: SecurityCounters, failures: list[str | None]) -> Authenticate:
    return Authenticate(
        _seen,
        authenticator=TOKENS,
        header="Authorization",
        prefix="Bearer",
        mcp_id="a",
        counters=counters,
        challenge=lambda f, _scope: f'Bearer realm="a", error="{f.error}"',
        on_failure=failures.append,
    )


@pytest.mark.anyio
async def test_the_layer_admits_strips_and_counts() -> None:
    counters, failures = SecurityCounters(), list[str | None]()
    sent = await call(_layer(counters, failures), make_scope("POST", headers=[("Authorization", "Bearer new-token")]))
    assert (sent.status, sent.body) == (200, b"token:new")
    assert counters.authentication_attempts == 1 and counters.authentication_failures == 0


@pytest.mark.anyio
async def test_the_layer_refuses_with_401_a_challenge_and_a_reason() -> None:
    counters, failures = SecurityCounters(), list[str | None]()
    scope = make_scope("POST", headers=[("Authorization", "Bearer nope")])
    scope[CLIENT_IP_KEY] = "10.0.0.9"
    sent = await call(_layer(counters, failures), scope)
    assert sent.status == 401
    assert sent.headers["www-authenticate"] == 'Bearer realm="a", error="invalid_token"'
    assert sent.json() == {"error": "invalid_token", "message": "invalid token"}
    assert failures == ["10.0.0.9"]
    assert counters.authentication_failures == 1 and counters.security_violations == 1


@pytest.mark.anyio
async def test_a_token_scoped_to_other_mcps_gets_403() -> None:
    layer = _layer(SecurityCounters(), [])
    layer.mcp_id = "b"
    sent = await call(layer, make_scope("POST", headers=[("Authorization", "Bearer new-token")]))
    assert sent.status == 403
    assert sent.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in sent.headers["www-authenticate"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("Authorization", "Bearer new-token"), ("Authorization", "Bearer nope")], id="valid-first"),
        pytest.param([("Authorization", "Bearer nope"), ("Authorization", "Bearer new-token")], id="valid-last"),
        pytest.param([("Authorization", "Bearer new-token")] * 2, id="same-twice"),
        pytest.param([("Authorization", "")] * 2, id="empty-twice"),
    ],
)
async def test_a_repeated_credential_header_is_a_400_never_a_guess(headers: list[tuple[str, str]]) -> None:
    counters, failures = SecurityCounters(), list[str | None]()
    scope = make_scope("POST", headers=headers)
    scope[CLIENT_IP_KEY] = "10.0.0.9"
    sent = await call(_layer(counters, failures), scope)
    assert sent.status == 400
    assert sent.json() == {"error": "invalid_request", "message": "more than one Authorization header"}
    assert sent.headers["www-authenticate"] == 'Bearer realm="a", error="invalid_request"'
    assert failures == ["10.0.0.9"], "it counts as a failed authentication (toward the ban)"


@pytest.mark.anyio
async def test_a_repeated_custom_credential_header_is_a_400() -> None:
    layer = Authenticate(
        _seen,
        authenticator=TOKENS,
        header="X-Api-Key",
        prefix="",
        mcp_id="a",
        counters=SecurityCounters(),
        challenge=lambda f, _scope: "Bearer",
    )
    once = await call(layer, make_scope("POST", headers=[("X-Api-Key", "new-token")]))
    assert once.status == 200
    twice = await call(layer, make_scope("POST", headers=[("x-api-key", "new-token"), ("X-API-KEY", "old-token")]))
    assert twice.status == 400
    assert twice.json()["message"] == "more than one X-Api-Key header"
