"""Per-tool authorization: who may see and call which tools, prompts and resources of an MCP.

With no policy every authenticated caller may use everything. With policies the default is deny
and a matching deny rule wins over any allow. A rule applies to a caller holding one of its roles
or named by one of its principal patterns; its optional CEL `when` must hold (a `when` that fails to
evaluate never grants and always denies: fail closed). `decide` is the pure decision;
`Authorizer` adds the caller's roles and a bounded cache for decisions that cannot depend on the
arguments; `AuthorizationPolicy` is the pipeline's `authorization` slot: a caller allowed nothing
gets 403 `insufficient_scope`, everyone else gets an `Access` in the scope, through which the
relay filters listings and refuses calls exactly as it refuses an unknown name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican.asgi import json_error
from mcp_barbican.audit.events import AuditEvent, request_fields
from mcp_barbican.config import compile_condition
from mcp_barbican.security.pipeline import Head, Policy
from mcp_barbican.security.principal import Principal, principal_of

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import AuthorizationConfig, PolicyRule
    from mcp_barbican.security.counters import SecurityCounters
    from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "ACCESS_KEY",
    "ANONYMOUS",
    "KINDS",
    "Access",
    "AuthorizationPolicy",
    "Authorizer",
    "Rule",
    "Verdict",
    "claim_at",
    "decide",
]

KINDS: Final = ("tools", "prompts", "resources")
#: Where the policy hands the caller's `Access` to the endpoint.
ACCESS_KEY: Final = "mcp_barbican.access"
#: Who an unauthenticated caller (`auth.type: none`) is to the policies.
ANONYMOUS: Final = Principal(id="anonymous", kind="none")
#: Cached decisions per MCP (all forgotten when full: a flood of names cannot grow it).
CACHE_MAX: Final = 4096
#: Longer names are decided every time, never kept (MCP names are at most 128 characters).
CACHED_NAME_MAX: Final = 512
_MENTIONS_ARGS: Final = re.compile(r"\bargs\b")
#: A condition reading more of the caller than its id and roles (its claims) cannot be cached per id and roles.
_MENTIONS_CLAIMS: Final = re.compile(r"\bclaims\b|\bprincipal\b(?!\s*\.\s*(id|roles)\b)")


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled policy rule (`index`: its place in `policies`)."""

    index: int
    roles: frozenset[str]
    principals: tuple[str, ...]
    #: Per kind, the rule's glob patterns as one compiled expression (None: it names nothing of that kind).
    allow: Mapping[str, re.Pattern[str] | None]
    deny: Mapping[str, re.Pattern[str] | None]
    when: str | None = None
    program: Any = None
    #: Its `when` may read the arguments (then listings cannot evaluate it).
    reads_args: bool = False
    #: Its decision may differ between two calls of one caller to one name (no caching).
    dynamic: bool = False

    @classmethod
    def build(cls, index: int, rule: PolicyRule) -> Rule:
        when = rule.when
        return cls(
            index,
            frozenset(rule.roles),
            tuple(rule.principals),
            {kind: _globs(getattr(rule.allow, kind)) for kind in KINDS},
            {kind: _globs(getattr(rule.deny, kind)) for kind in KINDS},
            when,
            compile_condition(when) if when is not None else None,
            reads_args=bool(when and _MENTIONS_ARGS.search(when)),
            dynamic=bool(when and (_MENTIONS_ARGS.search(when) or _MENTIONS_CLAIMS.search(when))),
        )

    def applies(self, principal_id: str, roles: frozenset[str] | tuple[str, ...]) -> bool:
        if not self.roles.isdisjoint(roles):
            return True
        return any(fnmatch.fnmatchcase(principal_id, pattern) for pattern in self.principals)

    def matches_allow(self, kind: str, name: str) -> bool:
        return _matches(self.allow[kind], name)

    def matches_deny(self, kind: str, name: str) -> bool:
        return _matches(self.deny[kind], name)

    def holds(self, facts: Mapping[str, Any]) -> bool | None:
        """Whether `when` holds (True without one); None when it cannot be evaluated."""
        if self.program is None:
            return True
        try:
            value = self.program.eval(data=facts)
            result = value.value()
        except (RuntimeError, TypeError, ValueError, OverflowError):  # a value the runtime cannot take: deny
            return None
        return result if isinstance(result, bool) else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision, the rule that made it (None: the default) and why, for the audit and `explain`."""

    allowed: bool
    rule: int | None
    reason: str


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """Glob patterns as one expression, matching exactly as `fnmatchcase` does (case-sensitive)."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))


def _matches(globs: re.Pattern[str] | None, name: str) -> bool:
    return globs is not None and globs.match(name) is not None


def decide(
    rules: tuple[Rule, ...],
    principal: Mapping[str, Any],
    mcp: str,
    kind: str,
    name: str,
    args: Mapping[str, Any] | None,
) -> Verdict:
    """Whether `principal` ({id, roles, claims}) may use `name` of `kind`; `args` None: a listing.

    In a listing a rule whose `when` reads the arguments cannot be evaluated: its allow shows
    the name (the call is decided with them), its deny hides nothing.
    """
    if not rules:
        return Verdict(True, None, "no policy: everything is allowed")
    return _evaluate(rules, principal, mcp, kind, name, args)


def _evaluate(
    rules: tuple[Rule, ...],
    principal: Mapping[str, Any],
    mcp: str,
    kind: str,
    name: str,
    args: Mapping[str, Any] | None,
) -> Verdict:
    roles = principal["roles"]
    allowed: Verdict | None = None
    failed: Verdict | None = None
    facts: dict[str, Any] | None = None
    for rule in rules:
        if not rule.applies(principal["id"], roles):
            continue
        denies = _matches(rule.deny[kind], name)
        allows = _matches(rule.allow[kind], name)
        if not denies and not allows:
            continue
        if args is None and rule.reads_args:
            holds: bool | None = not denies
        else:
            if facts is None and rule.program is not None:
                facts = {"principal": principal, "mcp": mcp, "tool": name, "args": args or {}}
            holds = rule.holds(facts or {})
        if denies and holds is not False:
            why = "denied by" if holds else "the condition failed to evaluate in"
            return Verdict(False, rule.index, f"{why} policies[{rule.index}]")
        if allows and holds and allowed is None:
            allowed = Verdict(True, rule.index, f"allowed by policies[{rule.index}]")
        elif allows and holds is None and failed is None:
            failed = Verdict(False, rule.index, f"the condition failed to evaluate in policies[{rule.index}]")
    if allowed is not None:
        return allowed
    return failed or Verdict(False, None, "no rule allows it (default deny)")


def claim_at(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """The roles at a dotted claim path: a list of strings, or a space-separated string; else none."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ()
        value = value.get(part)
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return ()


class Authorizer:
    """One MCP's compiled policies: the caller's roles, decisions, and a bounded cache of them."""

    def __init__(self, config: AuthorizationConfig | None, mcp_id: str) -> None:
        self.mcp_id = mcp_id
        self.rules: tuple[Rule, ...] = (
            tuple(Rule.build(i, rule) for i, rule in enumerate(config.policies)) if (config is not None) else ()
        )
        self.roles_claim = config.roles_claim if config is not None else None
        self.scope_roles = dict(config.scope_roles) if config is not None else {}
        self._cache: dict[tuple[str, tuple[str, ...], str, str], Verdict | tuple[Rule, ...]] = {}
        self._anything: dict[tuple[str, tuple[str, ...]], bool] = {}

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def roles_of(self, principal: Principal) -> tuple[str, ...]:
        """The roles of `principal` here: its credential's (or the `roles_claim` of its token), and its scopes'."""
        roles = principal.roles
        if self.roles_claim is not None and principal.claims:
            roles = claim_at(principal.claims, self.roles_claim)
        if self.scope_roles and principal.scopes:
            extra = [role for scope in principal.scopes for role in self.scope_roles.get(scope, ())]
            roles = tuple(dict.fromkeys((*roles, *extra)))
        return roles

    def facts(self, principal: Principal, roles: tuple[str, ...]) -> dict[str, Any]:
        return {"id": principal.id, "roles": list(roles), "claims": principal.claims}

    def check(self, principal: Principal, kind: str, name: str, args: Mapping[str, Any] | None = None) -> Verdict:
        """The decision for one call (`args`) or listing entry (`args` None).

        Per (principal, roles, kind, name) the cache holds the verdict when no rule that could
        decide reads the arguments or the claims, else those rules, so that a call evaluates
        only their conditions.
        """
        roles = self.roles_of(principal)
        key = (principal.id, roles, kind, name)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._plan(principal, roles, kind, name)
            if len(name) <= CACHED_NAME_MAX:
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = entry
        if isinstance(entry, Verdict):
            return entry
        return _evaluate(entry, self.facts(principal, roles), self.mcp_id, kind, name, args)

    def _plan(self, principal: Principal, roles: tuple[str, ...], kind: str, name: str) -> Verdict | tuple[Rule, ...]:
        if not self.rules:
            return Verdict(True, None, "no policy: everything is allowed")
        relevant = tuple(
            rule
            for rule in self.rules
            if rule.applies(principal.id, roles) and (rule.matches_allow(kind, name) or rule.matches_deny(kind, name))
        )
        if any(rule.dynamic for rule in relevant):
            return relevant
        return _evaluate(relevant, self.facts(principal, roles), self.mcp_id, kind, name, {})

    def allows_anything(self, principal: Principal) -> bool:
        """False when no rule that applies to `principal` allows it anything (then 403)."""
        if not self.rules:
            return True
        roles = self.roles_of(principal)
        key = (principal.id, roles)
        known = self._anything.get(key)
        if known is None:
            known = any(
                rule.applies(principal.id, roles) and any(rule.allow[kind] is not None for kind in KINDS)
                for rule in self.rules
            )
            if len(self._anything) >= CACHE_MAX:
                self._anything.clear()
            self._anything[key] = known
        return known


#: JSON-RPC methods naming one thing: the kind, and the key of params holding its name.
_NAMED: Final = {
    "tools/call": ("tools", "name"),
    "prompts/get": ("prompts", "name"),
    "resources/read": ("resources", "uri"),
    "resources/subscribe": ("resources", "uri"),
}
#: Listing methods: the kind, the result's list key, and the key naming each entry.
LISTINGS: Final = {
    "tools/list": ("tools", "tools", "name"),
    "prompts/list": ("prompts", "prompts", "name"),
    "resources/list": ("resources", "resources", "uri"),
    "resources/templates/list": ("resources", "resourceTemplates", "uriTemplate"),
}
_COMPLETION_REFS: Final = {"ref/prompt": ("prompts", "name"), "ref/resource": ("resources", "uri")}


def target(method: str, params: Any) -> tuple[str, str] | None:
    """The (kind, name) a request names, None when it names nothing authorization decides."""
    if not isinstance(params, dict):
        params = {}
    named = _NAMED.get(method)
    if named is not None:
        name = params.get(named[1])
        return named[0], name if isinstance(name, str) else ""
    if method == "completion/complete":
        ref = params.get("ref")
        if isinstance(ref, dict):
            kind = _COMPLETION_REFS.get(str(ref.get("type")))
            if kind is not None:
                name = ref.get(kind[1])
                return kind[0], name if isinstance(name, str) else ""
    return None


class Access:
    """What one caller may use of one MCP: the relay asks it about every call and listing."""

    __slots__ = ("audit", "authorizer", "counters", "fields", "principal")

    def __init__(
        self,
        authorizer: Authorizer,
        principal: Principal,
        *,
        counters: SecurityCounters | None = None,
        audit: AuditTrail | None = None,
        scope: Scope | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.principal = principal
        self.counters = counters
        self.audit = audit
        # The request's fields, not its scope: the scope holds this object, and a cycle would
        # leave every request's scope to the garbage collector.
        self.fields = request_fields(scope) if audit is not None and scope is not None else None

    def visible(self, kind: str, name: str) -> bool:
        return self.authorizer.check(self.principal, kind, name).allowed

    def permits(self, method: str, params: Any) -> bool:
        """Whether the request may go upstream; a refusal is counted and audited."""
        named = target(method, params)
        if named is None:
            return True
        kind, name = named
        args = params.get("arguments") if isinstance(params, dict) and kind == "tools" else None
        verdict = self.authorizer.check(self.principal, kind, name, args if isinstance(args, dict) else {})
        if not verdict.allowed:
            self.denied(method, kind, name, verdict.reason)
        return verdict.allowed

    def denied(self, action: str, kind: str, name: str, reason: str) -> None:
        if self.counters is not None:
            self.counters.authorization_denied += 1
            self.counters.violation()
        if self.audit is not None:
            fields = self.fields or {}
            mcp = self.authorizer.mcp_id
            event = AuditEvent(
                "authorization",
                action,
                False,
                resource=f"mcp:{mcp}" if kind == "mcps" else f"{kind[:-1]}:{mcp}/{name[:256]}",
                user=self.principal.id,
                error=reason,
                mcp=self.authorizer.mcp_id,
                tool=name[:256] if kind == "tools" else None,
                **fields,
            )
            self.audit.emit_soon(event)

    def filter_listing(self, method: str, result: Any) -> None:
        """Drop from a listing's result what the caller may not use (in place)."""
        listing = LISTINGS.get(method)
        if listing is None or not isinstance(result, dict):
            return
        kind, key, name_key = listing
        entries = result.get(key)
        if isinstance(entries, list):
            result[key] = [
                entry
                for entry in entries
                if isinstance(entry, dict) and self.visible(kind, str(entry.get(name_key, "")))
            ]


class AuthorizationPolicy(Policy):
    """The pipeline's `authorization` slot: 403 for a caller allowed nothing, else its `Access` handed on."""

    slot = "authorization"

    def __init__(
        self,
        app: ASGIApp,
        *,
        authorizer: Authorizer,
        counters: SecurityCounters,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        self.authorizer = authorizer
        self.counters = counters
        self.audit = audit

    def fast(self, scope: Scope, head: Head) -> bool:
        return self.authorizer.allows_anything(head.principal or ANONYMOUS)

    def settle(self, scope: Scope, head: Head) -> None:
        self._hand_on(scope, head.principal or ANONYMOUS)

    def _hand_on(self, scope: Scope, principal: Principal) -> None:
        scope[ACCESS_KEY] = Access(self.authorizer, principal, counters=self.counters, audit=self.audit, scope=scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = principal_of(scope) or ANONYMOUS
        if not self.authorizer.allows_anything(principal):
            reason = f"principal {principal.id!r} may use nothing of MCP {self.authorizer.mcp_id!r}"
            access = Access(self.authorizer, principal, counters=self.counters, audit=self.audit, scope=scope)
            access.denied("access", "mcps", self.authorizer.mcp_id, reason)
            await json_error(send, 403, "insufficient_scope", reason)
            return
        self._hand_on(scope, principal)
        await self.app(scope, receive, send)
