"""Authorization decisions from tables: deny wins, default deny, globs, roles and principals, `when`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_barbican.config import AuthorizationConfig, ProxyConfig, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.authorization import CACHE_MAX, Authorizer, Rule, Verdict, claim_at, decide, target
from mcp_barbican.security.principal import Principal

POLICIES: list[dict[str, Any]] = [
    {"roles": ["admin"], "allow": {"tools": ["*"], "prompts": ["*"], "resources": ["*"]}},
    {"roles": ["reader"], "allow": {"tools": ["read_*", "search"]}, "deny": {"tools": ["*delete*", "read_secret"]}},
    {"principals": ["token:ci-bot"], "allow": {"tools": ["echo"]}, "when": "args.message.size() < 10"},
    {"principals": ["mtls:*.corp.example"], "allow": {"prompts": ["greet"], "resources": ["file:///pub/*"]}},
    {"roles": ["auditor"], "allow": {"tools": ["*"]}, "when": "tool.startsWith('read_')"},
    {"roles": ["broken"], "allow": {"tools": ["echo"]}, "when": "args.missing == 1"},
    {"roles": ["admin"], "deny": {"tools": ["shutdown"]}},
]


def compiled(policies: list[dict[str, Any]] = POLICIES) -> tuple[Rule, ...]:
    config = AuthorizationConfig.model_validate({"policies": policies})
    return tuple(Rule.build(i, rule) for i, rule in enumerate(config.policies))


RULES = compiled()


def who(pid: str, *roles: str) -> dict[str, Any]:
    return {"id": pid, "roles": list(roles), "claims": {}}


@pytest.mark.parametrize(
    ("principal", "kind", "name", "args", "allowed", "rule"),
    [
        (who("token:a", "admin"), "tools", "anything", {}, True, 0),
        (who("token:a", "admin"), "tools", "shutdown", {}, False, 6),  # deny wins, whatever the order
        (who("token:r", "reader"), "tools", "read_file", {}, True, 1),
        (who("token:r", "reader"), "tools", "search", {}, True, 1),
        (who("token:r", "reader"), "tools", "read_delete_all", {}, False, 1),  # its own deny wins
        (who("token:r", "reader"), "tools", "read_secret", {}, False, 1),
        (who("token:r", "reader"), "tools", "READ_file", {}, False, None),  # globs are case-sensitive
        (who("token:r", "reader"), "tools", "write_file", {}, False, None),  # default deny
        (who("token:r", "reader"), "prompts", "greet", {}, False, None),
        (who("token:nobody"), "tools", "read_file", {}, False, None),
        (who("token:ci-bot"), "tools", "echo", {"message": "short"}, True, 2),  # when true
        (who("token:ci-bot"), "tools", "echo", {"message": "far too long"}, False, None),  # when false
        (who("token:ci-bot"), "tools", "echo", {}, False, 2),  # when errors: denied, and says which rule
        (who("token:ci-bot"), "tools", "echo", {"message": 5}, False, 2),  # no size() on an int
        (who("token:ci-bot", "reader"), "tools", "echo", {"message": "far too long"}, False, None),
        (who("token:other-bot"), "tools", "echo", {"message": "x"}, False, None),  # principals match by id
        (who("mtls:a.corp.example"), "prompts", "greet", {}, True, 3),  # principal globs
        (who("mtls:a.corp.example.evil"), "prompts", "greet", {}, False, None),
        (who("mtls:a.corp.example"), "resources", "file:///pub/x.txt", {}, True, 3),
        (who("mtls:a.corp.example"), "resources", "file:///etc/passwd", {}, False, None),
        (who("token:u", "auditor"), "tools", "read_x", {}, True, 4),  # when over the tool name
        (who("token:u", "auditor"), "tools", "write_x", {}, False, None),
        (who("token:u", "broken", "admin"), "tools", "echo", {}, True, 0),  # a failing allow grants nothing
    ],
)
def test_decision_table(
    principal: dict[str, Any], kind: str, name: str, args: dict[str, Any], allowed: bool, rule: int | None
) -> None:
    verdict = decide(RULES, principal, "m", kind, name, args)
    assert (verdict.allowed, verdict.rule) == (allowed, rule), verdict.reason


@pytest.mark.parametrize(
    ("principal", "kind", "name", "visible"),
    [
        (who("token:ci-bot"), "tools", "echo", True),  # its `when` reads the arguments: the call decides
        (who("token:ci-bot"), "tools", "add", False),
        (who("token:u", "auditor"), "tools", "read_x", True),  # a `when` without args is evaluated
        (who("token:u", "auditor"), "tools", "write_x", False),
        (who("token:a", "admin"), "tools", "shutdown", False),
    ],
)
def test_listing_table(principal: dict[str, Any], kind: str, name: str, visible: bool) -> None:
    assert decide(RULES, principal, "m", kind, name, None).allowed is visible


def test_a_deny_with_a_failing_condition_denies() -> None:
    rules = compiled(
        [{"roles": ["r"], "allow": {"tools": ["*"]}}, {"roles": ["r"], "deny": {"tools": ["x"]}, "when": "args.a"}]
    )
    assert not decide(rules, who("p", "r"), "m", "tools", "x", {}).allowed  # no key a: fails closed
    assert not decide(rules, who("p", "r"), "m", "tools", "x", {"a": True}).allowed
    assert decide(rules, who("p", "r"), "m", "tools", "x", {"a": False}).allowed


def test_no_policy_allows_everything() -> None:
    assert decide((), who("p"), "m", "tools", "x", {}).allowed


def test_enormous_arguments_are_decided() -> None:
    big = {"message": "x" * 3_000_000, "other": list(range(50_000))}
    assert not decide(RULES, who("token:ci-bot"), "m", "tools", "echo", big).allowed


@pytest.mark.parametrize(
    ("claims", "path", "roles"),
    [
        ({"roles": ["a", "b"]}, "roles", ("a", "b")),
        ({"realm_access": {"roles": ["a"]}}, "realm_access.roles", ("a",)),
        ({"groups": "a b"}, "groups", ("a", "b")),
        ({"roles": ["a", 1]}, "roles", ()),  # a malformed list grants nothing
        ({"realm_access": "x"}, "realm_access.roles", ()),
        ({}, "roles", ()),
    ],
)
def test_claim_at(claims: dict[str, Any], path: str, roles: tuple[str, ...]) -> None:
    assert claim_at(claims, path) == roles


def authorizer(**config: Any) -> Authorizer:
    return Authorizer(AuthorizationConfig.model_validate({"policies": POLICIES, **config}), "m")


def test_roles_come_from_the_claim_path_and_the_scopes() -> None:
    auth = authorizer(roles_claim="realm_access.roles", scope_roles={"mcp:read": ["reader"]})
    jwt = Principal("jwt:i:s", "jwt", roles=("admin",), scopes=("mcp:read",), claims={"realm_access": {"roles": []}})
    assert auth.roles_of(jwt) == ("reader",)  # the configured path replaces the `roles` claim
    assert auth.check(jwt, "tools", "read_file", {}).allowed
    assert not auth.check(jwt, "tools", "anything", {}).allowed
    token = Principal("token:t", "token", roles=("admin",))
    assert auth.roles_of(token) == ("admin",)


def test_cache_keeps_argument_free_decisions_only_and_is_bounded() -> None:
    auth = authorizer()
    reader = Principal("token:r", "token", roles=("reader",))
    bot = Principal("token:ci-bot", "token")
    assert auth.check(reader, "tools", "read_file", {}).allowed
    assert len(auth._cache) == 1
    assert auth.check(bot, "tools", "echo", {"message": "ok"}).allowed
    assert not auth.check(bot, "tools", "echo", {"message": "much too long"}).allowed
    verdicts = [entry for entry in auth._cache.values() if isinstance(entry, Verdict)]
    assert len(verdicts) == 1, "the `when` on args is evaluated each time: only its rules are kept"
    for i in range(CACHE_MAX + 10):
        auth.check(reader, "tools", f"read_{i}", {})
    assert len(auth._cache) <= CACHE_MAX
    auth._cache.clear()
    huge = "read_" + "x" * 1_000_000
    assert auth.check(reader, "tools", huge, {}).allowed
    assert not auth._cache, "a name longer than any MCP name is decided, never kept"


@pytest.mark.parametrize(
    ("when", "dynamic"),
    [
        ("args.a == 1", True),
        ("principal.claims.x == 1", True),
        ("'x' in principal", True),
        ("principal.id == 'a' && 'r' in principal.roles", False),
        ("tool.startsWith('read_') && mcp == 'm'", False),
    ],
)
def test_conditions_reading_arguments_or_claims_are_never_cached(when: str, dynamic: bool) -> None:
    assert compiled([{"roles": ["r"], "allow": {"tools": ["*"]}, "when": when}])[0].dynamic is dynamic


def test_a_claim_condition_is_decided_per_token() -> None:
    auth = Authorizer(
        AuthorizationConfig.model_validate(
            {"policies": [{"roles": ["r"], "allow": {"tools": ["*"]}, "when": "principal.claims.tier == 'gold'"}]}
        ),
        "m",
    )
    gold = Principal("jwt:i:s", "jwt", roles=("r",), claims={"tier": "gold"})
    lead = Principal("jwt:i:s", "jwt", roles=("r",), claims={"tier": "lead"})  # same id and roles
    assert auth.check(gold, "tools", "x", {}).allowed
    assert not auth.check(lead, "tools", "x", {}).allowed


def test_allows_anything() -> None:
    auth = authorizer()
    assert auth.allows_anything(Principal("token:r", "token", roles=("reader",)))
    assert not auth.allows_anything(Principal("token:x", "token", roles=("writer",)))
    assert Authorizer(None, "m").allows_anything(Principal("token:x", "token"))


@pytest.mark.parametrize(
    ("method", "params", "named"),
    [
        ("tools/call", {"name": "x"}, ("tools", "x")),
        ("tools/call", {"name": 3}, ("tools", "")),
        ("prompts/get", {"name": "p"}, ("prompts", "p")),
        ("resources/read", {"uri": "u"}, ("resources", "u")),
        ("resources/subscribe", {"uri": "u"}, ("resources", "u")),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"}}, ("prompts", "p")),
        ("completion/complete", {"ref": {"type": "ref/resource", "uri": "u"}}, ("resources", "u")),
        ("tools/list", {}, None),
        ("ping", None, None),
    ],
)
def test_target(method: str, params: Any, named: tuple[str, str] | None) -> None:
    assert target(method, params) == named


def mcp_with(authorization: dict[str, Any]) -> dict[str, Any]:
    return {"mcps": [{"id": "m", "command": "x", "auth": {"type": "none"}, "authorization": authorization}]}


@pytest.mark.parametrize(
    ("authorization", "path", "words"),
    [
        (
            {"policies": [{"roles": ["r"], "allow": {"tools": ["*"]}, "when": "args.x.size( <"}]},
            "policies[0].when",
            "CEL",
        ),
        ({"policies": [{"roles": ["r"], "allow": {"tools": ["*"]}, "when": "user == 1"}]}, "policies[0].when", "user"),
        ({"policies": [{"roles": ["r"], "allow": {"tools": ["*"]}, "when": "1 + 1"}]}, "policies[0].when", "int"),
        ({"policies": [{"allow": {"tools": ["*"]}}]}, "policies[0].roles", "roles or the principals"),
        ({"policies": [{"roles": ["r"]}]}, "policies[0].allow", "allow or deny"),
        ({"policies": [{"roles": ["r"], "allow": {"tool": ["*"]}}]}, "policies[0].allow.tool", ""),
        ({"policies": [{"roles": ["r"], "allow": {"tools": [""]}}]}, "policies[0].allow.tools[0]", ""),
        ({"roles_claim": "a..b"}, "roles_claim", "dotted"),
        ({"scope_roles": {"s": "reader"}}, "scope_roles.s", ""),
    ],
)
def test_config_errors_name_their_key_path(authorization: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_model(ProxyConfig, mcp_with(authorization))
    assert caught.value.path == f"mcps[0].authorization.{path}"
    assert words in str(caught.value)


def test_server_default_is_replaced_not_merged() -> None:
    config = validate_model(
        ProxyConfig,
        {
            "server": {"authorization": {"policies": [{"roles": ["a"], "allow": {"tools": ["*"]}}]}},
            "mcps": [
                {"id": "m", "command": "x", "auth": {"type": "none"}},
                {"id": "n", "command": "x", "auth": {"type": "none"}, "authorization": {"scope_roles": {"s": ["a"]}}},
            ],
        },
    )
    first, second = (config.effective_authorization(mcp) for mcp in config.mcps)
    assert first is not None and len(first.policies) == 1
    assert second is not None and second.policies == ()


def readme_example() -> ProxyConfig:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Authorization: who may see and call what", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    text = (
        block.replace("${OPS_TOKEN}", "o" * 24).replace("${ANALYST_TOKEN}", "a" * 24).replace("${CI_TOKEN}", "c" * 24)
    )
    return validate_model(ProxyConfig, yaml.safe_load(text))


@pytest.mark.parametrize(
    ("principal", "roles", "kind", "name", "args", "allowed"),
    [
        ("token:ops", ("admin",), "tools", "write_file", {}, True),
        ("token:analyst", ("reader",), "tools", "read_text_file", {}, True),
        ("token:analyst", ("reader",), "tools", "read_secret_file", {}, False),
        ("token:analyst", ("reader",), "resources", "file:///srv/data/public/a.txt", None, True),
        ("token:analyst", ("reader",), "resources", "file:///srv/data/private/a.txt", None, False),
        ("token:ci-bot", (), "tools", "read_text_file", {"path": "/srv/data/ci/log.txt"}, True),
        ("token:ci-bot", (), "tools", "read_text_file", {"path": "/srv/data/ci/../secret"}, False),
        ("token:ci-bot", (), "tools", "read_text_file", {"path": "/etc/passwd"}, False),
        ("token:other", (), "tools", "read_text_file", {}, False),
    ],
)
def test_the_readme_example_decides_as_the_readme_says(
    principal: str, roles: tuple[str, ...], kind: str, name: str, args: dict[str, Any] | None, allowed: bool
) -> None:
    config = readme_example()
    auth = Authorizer(config.effective_authorization(config.mcps[0]), "files")
    assert auth.check(Principal(principal, "token", roles=roles), kind, name, args).allowed is allowed


def test_the_configuration_reference_example_loads() -> None:
    page = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = page.split("## AuthorizationConfig", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    config = validate_model(ProxyConfig, {**example, "server": {"auth": {"type": "token", "token": "t" * 24}}})
    authorization = config.mcps[0].authorization
    assert authorization is not None and len(authorization.policies) == 3
