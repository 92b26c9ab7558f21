"""Principal fields and claims as upstream headers: what is sent, what is left out and why."""

from __future__ import annotations

import pytest

from mcp_barbican.security.identity import identity_headers, identity_value
from mcp_barbican.security.principal import Principal

JWT = Principal(
    id="jwt:https://issuer:alice",
    kind="jwt",
    roles=("reader", "admin"),
    scopes=("mcp:read", "mcp:write"),
    claims={
        "sub": "alice",
        "org": {"name": "Acme", "id": 7, "deep": {"x": True}},
        "groups": ["a", "b"],
        "mixed": ["a", {"b": 1}],
        "newline": "alice\r\nX-Admin: yes",
        "accent": "José",
        "nul": "a\x00b",
        "huge": "x" * 5000,
        "nothing": None,
        "object": {"a": 1},
    },
)
TOKEN = Principal(id="token:ci", kind="token", roles=("ci",))

VALUES = [
    pytest.param(JWT, "id", "jwt:https://issuer:alice", id="id"),
    pytest.param(JWT, "kind", "jwt", id="kind"),
    pytest.param(JWT, "roles", "reader,admin", id="roles"),
    pytest.param(JWT, "scopes", "mcp:read mcp:write", id="scopes"),
    pytest.param(JWT, "sub", "alice", id="claim"),
    pytest.param(JWT, "org.name", "Acme", id="dotted"),
    pytest.param(JWT, "org.id", "7", id="number"),
    pytest.param(JWT, "org.deep.x", "true", id="boolean"),
    pytest.param(JWT, "groups", "a,b", id="list"),
    pytest.param(JWT, "mixed", None, id="list-with-object"),
    pytest.param(JWT, "object", None, id="object"),
    pytest.param(JWT, "nothing", None, id="null"),
    pytest.param(JWT, "org.missing", None, id="missing-dotted"),
    pytest.param(JWT, "sub.x", None, id="path-through-a-string"),
    pytest.param(TOKEN, "sub", None, id="token-has-no-sub"),
    pytest.param(TOKEN, "roles", "ci", id="token-roles"),
]


@pytest.mark.parametrize(("principal", "path", "expected"), VALUES)
def test_identity_values(principal: Principal, path: str, expected: str | None) -> None:
    assert identity_value(principal, path) == expected


@pytest.mark.parametrize("path", ["newline", "accent", "nul", "huge"])
def test_unsafe_values_are_left_out_without_the_value_in_the_reason(path: str) -> None:
    headers, left_out = identity_headers(JWT, {"X-User": "sub", "X-Odd": path})
    assert headers == {"X-User": "alice"}
    assert [name for name, _ in left_out] == ["X-Odd"]
    reason = left_out[0][1]
    assert "José" not in reason and "alice" not in reason and "xxxx" not in reason


def test_a_missing_claim_is_left_out_and_said() -> None:
    headers, left_out = identity_headers(TOKEN, {"X-Forwarded-User": "sub", "X-Forwarded-Roles": "roles"})
    assert headers == {"X-Forwarded-Roles": "ci"}
    assert left_out == [("X-Forwarded-User", "token principal has no 'sub' that fits a header")]
