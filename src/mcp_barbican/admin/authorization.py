"""Authorization on the admin plane: whom a request speaks for, what it may see, and why.

Without `?principal=` the caller is its admin principal (`admin:{n}`) with the role `admin`:
policies grant it what it may reach, like anyone. With it, the admin sees and calls as that
principal would: a listed or issued token's roles are known here; a JWT's or a certificate's are
not (they come with the credential), so `roles=a,b` names them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from mcp_barbican.security.authorization import Access, Authorizer
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.admin.control import AdminCore, ServedMcp
    from mcp_barbican.config import ProxyConfig

__all__ = ["ADMIN_ROLE", "access_for", "call_refusal", "explain", "principal_for"]

ADMIN_ROLE: Final = "admin"


def principal_for(core: AdminCore, caller: str | None, named: str | None, roles: str | None) -> Principal:
    """The principal a request speaks for: `named` (with its known roles and `roles`), else the admin caller."""
    extra = tuple(role for role in (roles or "").split(",") if role)
    if not named:
        return Principal(caller or "admin", "admin", roles=tuple(dict.fromkeys((ADMIN_ROLE, *extra))))
    known, mcps = _token_roles(core, named)
    return Principal(named, named.partition(":")[0], roles=tuple(dict.fromkeys((*known, *extra))), mcps=mcps)


def _token_roles(core: AdminCore, principal: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    kind, _, token_id = principal.partition(":")
    if kind != "token":
        return (), None
    record = core.shields.issued.get(token_id)
    if record is not None:
        return tuple(record.roles), record.mcps
    config = core.control.config
    for auth in (config.server.auth, *(mcp.auth for mcp in config.mcps)):
        for entry in auth.tokens if auth is not None else ():
            if entry.id == token_id:
                return tuple(entry.roles), tuple(entry.mcps) or None
    return (), None


def authorizer(config: ProxyConfig, runtime: ServedMcp) -> Authorizer:
    return Authorizer(config.effective_authorization(runtime.mcp), runtime.id)


def access_for(core: AdminCore, runtime: ServedMcp, principal: Principal) -> Access | None:
    """The principal's access to one MCP; None when it may use nothing of it (or its credential does not reach it)."""
    decider = authorizer(core.control.config, runtime)
    if not principal.reaches(runtime.id) or not decider.allows_anything(principal):
        return None
    return Access(decider, principal, counters=core.counters, audit=core.audit if core.audit.enabled else None)


def call_refusal(
    core: AdminCore, runtime: ServedMcp, principal: Principal, tool: str, arguments: dict[str, Any]
) -> str | None:
    """Why `principal` may not call `tool` with `arguments` (counted and audited), None when it may."""
    access = access_for(core, runtime, principal)
    if access is not None and access.permits("tools/call", {"name": tool, "arguments": arguments}):
        return None
    if access is None:
        reason = f"principal {principal.id!r} may use nothing of MCP {runtime.id!r}"
        audit = core.audit if core.audit.enabled else None
        Access(Authorizer(None, runtime.id), principal, counters=core.counters, audit=audit).denied(
            "tools/call", "tools", tool, reason
        )
        return reason
    return f"principal {principal.id!r} may not call tool {tool!r} of MCP {runtime.id!r}"


def explain(core: AdminCore, runtime: ServedMcp, principal: Principal, kind: str, name: str) -> dict[str, Any]:
    """Which rule decides whether `principal` may use `name` (a listing's decision: without arguments)."""
    config = core.control.config
    decider = authorizer(config, runtime)
    verdict = decider.check(principal, kind, name)
    rule = decider.rules[verdict.rule] if verdict.rule is not None else None
    source = None
    if decider.active:
        source = "server.authorization" if runtime.mcp.authorization is None else "the MCP's own authorization"
    roles = decider.roles_of(principal)
    reads_args = any(
        r.reads_args and r.applies(principal.id, roles) and (r.matches_allow(kind, name) or r.matches_deny(kind, name))
        for r in decider.rules
    )
    return {
        "principal": principal.id,
        "roles": list(roles),
        "mcp": runtime.id,
        "kind": kind,
        "name": name,
        "allowed": verdict.allowed and principal.reaches(runtime.id),
        "reason": verdict.reason if principal.reaches(runtime.id) else "the principal's credential does not reach it",
        "policy_source": source,
        "rule": None if rule is None else {"index": rule.index, "when": rule.when},
        #: A `when` reading the arguments: the call's own arguments decide it.
        "depends_on_arguments": reads_args,
    }
