"""`mcps[].upstream_auth`: what loads, and every mistake at its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import AUTH, load, load_error

HTTP = "url: 'https://up.example/mcp'"
TX = "token_exchange: {token_endpoint: 'https://sts.example/token', client_id: proxy, client_secret: s3cret}"


def mcp(fields: str, auth: str = AUTH) -> str:
    return auth + f"mcps: [{{id: a, {fields}}}]\n"


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        pytest.param(
            mcp("command: x, upstream_auth: {type: identity_headers, identity_headers: {X-User: sub}}"),
            "mcps[0].upstream_auth",
            "only used with transports sse and streamable-http",
            id="stdio",
        ),
        pytest.param(
            mcp(f"{HTTP}, upstream_auth: {{type: identity_headers}}"),
            "mcps[0].upstream_auth.identity_headers",
            "at least one header",
            id="identity-headers-empty",
        ),
        pytest.param(
            mcp(f"{HTTP}, upstream_auth: {{type: token_exchange}}"),
            "mcps[0].upstream_auth.token_exchange",
            "required for type token_exchange",
            id="token-exchange-missing",
        ),
        pytest.param(
            mcp(f"{HTTP}, upstream_auth: {{type: static, {TX}}}"),
            "mcps[0].upstream_auth.token_exchange",
            "not used with type static",
            id="token-exchange-with-static",
        ),
        pytest.param(
            mcp(f"{HTTP}, upstream_auth: {{type: identity_headers, identity_headers: {{Authorization: sub}}}}"),
            "mcps[0].upstream_auth.identity_headers.Authorization",
            "cannot carry an identity",
            id="identity-in-authorization",
        ),
        pytest.param(
            mcp(f"{HTTP}, upstream_auth: {{type: identity_headers, identity_headers: {{X-User: 'a b'}}}}"),
            "mcps[0].upstream_auth.identity_headers.X-User",
            "dotted claim path",
            id="bad-claim-path",
        ),
        pytest.param(
            mcp(
                f"{HTTP}, headers: {{X-User: x}}, "
                "upstream_auth: {type: identity_headers, identity_headers: {x-user: id}}"
            ),
            "mcps[0].upstream_auth.identity_headers.x-user",
            "also set in headers",
            id="identity-header-also-static",
        ),
        pytest.param(
            mcp(f"{HTTP}, headers: {{Authorization: 'Bearer x'}}, upstream_auth: {{type: token_exchange, {TX}}}"),
            "mcps[0].headers.Authorization",
            "token_exchange sets Authorization",
            id="token-exchange-and-static-authorization",
        ),
        pytest.param(
            mcp(f"{HTTP}, auth: {{type: none}}, upstream_auth: {{type: token_exchange, {TX}}}"),
            "mcps[0].upstream_auth.type",
            "needs a bearer credential",
            id="token-exchange-without-credential",
        ),
        pytest.param(
            mcp(f"{HTTP}, upstream_auth: {{type: token_exchange, token_exchange: {{client_id: p, client_secret: s}}}}"),
            "mcps[0].upstream_auth.token_exchange.token_endpoint",
            "",
            id="token-endpoint-missing",
        ),
    ],
)
def test_upstream_auth_mistakes_name_their_path(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    error = load_error(tmp_path, text)
    assert error.path == path, str(error)
    assert fragment in str(error)


def test_upstream_auth_loads_and_defaults_to_static(tmp_path: Path) -> None:
    config = load(tmp_path, mcp(f"{HTTP}, upstream_auth: {{type: token_exchange, {TX}, }}"))
    upstream = config.mcps[0].upstream_auth
    assert upstream is not None and upstream.per_principal
    assert upstream.token_exchange is not None and upstream.token_exchange.client_secret.get_secret_value() == "s3cret"
    plain = load(tmp_path, mcp(f"{HTTP}, upstream_auth: {{}}")).mcps[0].upstream_auth
    assert plain is not None and plain.type == "static" and not plain.per_principal


def test_the_client_secret_is_masked(tmp_path: Path) -> None:
    from mcp_barbican.config import masked_dump

    dumped = masked_dump(load(tmp_path, mcp(f"{HTTP}, upstream_auth: {{type: token_exchange, {TX}}}")))
    assert "s3cret" not in str(dumped)
