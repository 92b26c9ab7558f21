"""RFC 9728 metadata documents and RFC 6750 `WWW-Authenticate` challenges."""

from __future__ import annotations

import re
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_barbican.config import JwtConfig, OAuth2Config
from mcp_barbican.security.oauth import (
    MAX_DESCRIPTION_CHARS,
    metadata_url,
    protected_resource_metadata,
    www_authenticate,
)

RESOURCE: Final = "https://proxy.test/mcp/demo"
AS: Final = "https://auth.test"
JWKS: Final = "https://auth.test/.well-known/jwks.json"
SECRET_JWT: Final = {"secret": "s" * 32, "algorithms": ["HS256"]}
JWKS_JWT: Final = {"jwks_url": JWKS, "algorithms": ["RS256"]}

PRM_CASES = [
    pytest.param(
        {"authorization_servers": [AS]},
        SECRET_JWT,
        {"resource": RESOURCE, "authorization_servers": [AS], "bearer_methods_supported": ["header"]},
        id="minimal",
    ),
    pytest.param(
        {"authorization_servers": [AS, "https://backup.test"], "scopes_supported": ["mcp:read", "mcp:write"]},
        JWKS_JWT,
        {
            "resource": RESOURCE,
            "authorization_servers": [AS, "https://backup.test"],
            "scopes_supported": ["mcp:read", "mcp:write"],
            "bearer_methods_supported": ["header"],
            "jwks_uri": JWKS,
        },
        id="scopes and jwks",
    ),
    pytest.param(
        {"authorization_servers": [AS], "resource": "https://public.test/mcp/demo"},
        SECRET_JWT,
        {
            "resource": "https://public.test/mcp/demo",
            "authorization_servers": [AS],
            "bearer_methods_supported": ["header"],
        },
        id="configured resource wins",
    ),
]


@pytest.mark.parametrize(("oauth2", "jwt", "expected"), PRM_CASES)
def test_protected_resource_metadata(oauth2: dict[str, Any], jwt: dict[str, Any], expected: dict[str, Any]) -> None:
    document = protected_resource_metadata(RESOURCE, OAuth2Config.model_validate(oauth2), JwtConfig.model_validate(jwt))
    assert document == expected


METADATA_URL_CASES = [
    pytest.param(RESOURCE, "https://proxy.test/.well-known/oauth-protected-resource/mcp/demo", id="path"),
    pytest.param("https://proxy.test", "https://proxy.test/.well-known/oauth-protected-resource", id="host"),
    pytest.param("https://proxy.test/", "https://proxy.test/.well-known/oauth-protected-resource", id="slash"),
    pytest.param(
        "https://proxy.test:8443/mcp?tenant=a",
        "https://proxy.test:8443/.well-known/oauth-protected-resource/mcp?tenant=a",
        id="port and query",
    ),
]


@pytest.mark.parametrize(("resource", "expected"), METADATA_URL_CASES)
def test_metadata_url(resource: str, expected: str) -> None:
    assert metadata_url(resource) == expected


CHALLENGE_CASES = [
    pytest.param({}, 'Bearer realm="demo"', id="missing credentials: no error"),
    pytest.param(
        {"error": "invalid_token", "description": "token expired"},
        'Bearer realm="demo", error="invalid_token", error_description="token expired"',
        id="invalid token",
    ),
    pytest.param(
        {
            "error": "invalid_token",
            "description": "invalid signature",
            "resource_metadata": "https://proxy.test/.well-known/oauth-protected-resource/mcp/demo",
        },
        'Bearer realm="demo", error="invalid_token", error_description="invalid signature", '
        'resource_metadata="https://proxy.test/.well-known/oauth-protected-resource/mcp/demo"',
        id="with resource metadata",
    ),
    pytest.param(
        {"error": "insufficient_scope", "scope": "files:read files:write", "resource_metadata": "https://p.test/m"},
        'Bearer realm="demo", error="insufficient_scope", scope="files:read files:write", '
        'resource_metadata="https://p.test/m"',
        id="insufficient scope",
    ),
    pytest.param(
        {"error": "invalid_token", "description": "no key for kid 'a\"b\\c'"},
        'Bearer realm="demo", error="invalid_token", error_description="no key for kid \'a\'b/c\'"',
        id="quote and backslash in a description",
    ),
    pytest.param(
        {"error": "invalid_token", "description": "bad\r\nSet-Cookie: x=1"},
        'Bearer realm="demo", error="invalid_token", error_description="bad??Set-Cookie: x=1"',
        id="CR LF cannot split the header",
    ),
    pytest.param(
        {"error": "invalid_token", "description": "caf\u00e9 \u2603"},
        'Bearer realm="demo", error="invalid_token", error_description="caf? ?"',
        id="non-ASCII replaced",
    ),
    pytest.param({"error": "", "description": ""}, 'Bearer realm="demo"', id="empty values left out"),
]


@pytest.mark.parametrize(("params", "expected"), CHALLENGE_CASES)
def test_www_authenticate(params: dict[str, str], expected: str) -> None:
    assert www_authenticate("demo", **params) == expected


@pytest.mark.parametrize(
    ("realm", "expected"),
    [
        pytest.param('my "realm"', 'Bearer realm="my \\"realm\\""', id="quote escaped"),
        pytest.param("a\\b", 'Bearer realm="a\\\\b"', id="backslash escaped"),
    ],
)
def test_realm_is_a_quoted_string(realm: str, expected: str) -> None:
    assert www_authenticate(realm) == expected


def test_long_descriptions_are_cut() -> None:
    header = www_authenticate("demo", error="invalid_token", description="x" * 1000)
    assert f'error_description="{"x" * MAX_DESCRIPTION_CHARS}"' in header


_PARAM = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def parse_challenge(header: str) -> dict[str, str]:
    """A strict reader of what `www_authenticate` writes: `Bearer name="value", ...`."""
    assert header.startswith("Bearer ")
    params: dict[str, str] = {}
    rest = header.removeprefix("Bearer ")
    while rest:
        match = _PARAM.match(rest)
        assert match is not None, rest
        params[match[1]] = re.sub(r"\\(.)", r"\1", match[2])
        rest = rest[match.end() :]
        if rest:
            assert rest.startswith(", "), rest
            rest = rest[2:]
    return params


SAFE_TEXT: Final = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1
)


@given(realm=st.text(), description=st.text(), scope=st.text())
def test_any_input_gives_one_parseable_header_line(realm: str, description: str, scope: str) -> None:
    header = www_authenticate(realm, error="invalid_token", description=description, scope=scope)
    assert header.isascii() and header.isprintable()
    params = parse_challenge(header)
    assert params["realm"] == "".join(c if " " <= c <= "~" else "?" for c in realm)
    assert params["error"] == "invalid_token"


@given(realm=SAFE_TEXT, description=SAFE_TEXT.filter(lambda t: len(t) <= MAX_DESCRIPTION_CHARS), scope=SAFE_TEXT)
def test_safe_values_round_trip(realm: str, description: str, scope: str) -> None:
    header = www_authenticate(
        realm, error="invalid_token", description=description, scope=scope, resource_metadata=RESOURCE
    )
    assert parse_challenge(header) == {
        "realm": realm,
        "error": "invalid_token",
        "error_description": description,
        "scope": scope,
        "resource_metadata": RESOURCE,
    }
