"""Who may see and call what on an MCP (`mcps[].authorization`, default `server.authorization`).

`when` conditions are CEL (the C++ reference implementation that Envoy's RBAC also runs), compiled
and type-checked here, at load: a syntax error or an unknown variable is a config error at its key.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Final, Self

from cel_expr_python import cel
from pydantic import AfterValidator, Field, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import Model, NonEmptyStr

__all__ = ["AuthorizationConfig", "CEL_VARIABLES", "Grants", "PolicyRule", "compile_condition"]

#: What a `when` condition sees: the caller, the MCP's id, the tool (prompt, resource) name, the arguments.
CEL_VARIABLES: Final = ("principal", "mcp", "tool", "args")
_DOTTED: Final = re.compile(r"[^.\s]+(\.[^.\s]+)*")


@functools.cache
def _environment() -> Any:
    dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    variables = {"principal": dyn_map, "mcp": cel.Type.STRING, "tool": cel.Type.STRING, "args": dyn_map}
    return cel.NewEnv(variables=variables)


@functools.lru_cache(maxsize=1024)
def compile_condition(text: str) -> Any:
    """The compiled, type-checked CEL program of one `when` (one per distinct text, however often loaded)."""
    try:
        program = _environment().compile(text)
    except RuntimeError as exc:
        first = str(exc).removeprefix("INVALID_ARGUMENT: ").strip().splitlines()[0]
        raise ValueError(f"not a valid CEL condition: {first}") from None
    kind = program.return_type().name().lower()
    if kind not in ("bool", "dyn"):
        raise ValueError(f"a condition must be true or false, this one gives {kind}")
    return program


def _check_condition(text: str) -> str:
    compile_condition(text)
    return text


def _check_claim_path(text: str) -> str:
    if not _DOTTED.fullmatch(text):
        raise ValueError(f"{text!r} is not a dotted claim path (e.g. realm_access.roles)")
    return text


class Grants(Model):
    """Glob patterns (case-sensitive, like tool_filter) per kind of thing an MCP offers."""

    tools: tuple[NonEmptyStr, ...] = ()
    prompts: tuple[NonEmptyStr, ...] = ()
    #: Resource URIs (and URI templates in listings).
    resources: tuple[NonEmptyStr, ...] = ()

    def empty(self) -> bool:
        return not (self.tools or self.prompts or self.resources)


class PolicyRule(Model):
    """One rule: to whom it applies, what it allows and denies, and an optional CEL condition."""

    roles: tuple[NonEmptyStr, ...] = ()
    #: Principal ids (`token:ci-bot`, `jwt:{iss}:{sub}`, `mtls:{identity}`); glob patterns allowed.
    principals: tuple[NonEmptyStr, ...] = ()
    allow: Grants = Grants()
    deny: Grants = Grants()
    when: Annotated[str, AfterValidator(_check_condition)] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.roles and not self.principals:
            raise LocatedError(("roles",), "name the roles or the principals this rule applies to")
        if self.allow.empty() and self.deny.empty():
            raise LocatedError(("allow",), "a rule must allow or deny something")
        return self


class AuthorizationConfig(Model):
    """Policies of one MCP; a per-MCP block replaces `server.authorization` as a whole."""

    #: Where a token's roles are (dotted path into its claims); unset: the `roles` claim.
    roles_claim: Annotated[str, AfterValidator(_check_claim_path)] | None = None
    #: OAuth scopes granting roles.
    scope_roles: dict[NonEmptyStr, tuple[NonEmptyStr, ...]] = Field(default_factory=dict)
    #: None anywhere: every authenticated caller may use everything; any: default deny, deny wins.
    policies: tuple[PolicyRule, ...] = ()
