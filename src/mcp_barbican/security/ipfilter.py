"""The IP filter: whether a client address may pass the static lists and dynamic rules, and the layer.

Deny always wins: a static blacklist entry or a dynamic deny rule (bans included) refuses an
address even when a whitelist names it. A whitelist applies as soon as it has any entry,
static or dynamic: then everything not on it is refused, an unknown address included. The
lists are `addresses.IpSet`s and the dynamic rules an `iprules.DynamicRules`, so a decision
costs one hash lookup per distinct prefix length whatever the number of entries. A banned
client is told so: 403 `banned` with `Retry-After`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mcp_barbican.asgi import json_error, respond_json
from mcp_barbican.audit.events import AuditEvent, request_fields
from mcp_barbican.security.addresses import IpSet, client_ip, parse_ip
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.iprules import Clock, DynamicRules
from mcp_barbican.security.pipeline import Head, Policy
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail

__all__ = [
    "IpFilter",
    "IpVerdict",
    "decide",
    "refuse",
]

# One text for every refusal: naming the rule would tell a prober which lists exist.
_BLOCKED_MESSAGE: Final = "requests from this address are not allowed"
_BANNED_MESSAGE: Final = "this address is banned for a while after repeated authentication failures"
# Verdicts kept per address while no dynamic rule exists (the static lists cannot change).
_STATIC_CACHE: Final = 65_536
# WebSocket close code "policy violation"; a close before accept becomes a 403 at the server.
_WS_POLICY_VIOLATION: Final = 1008


@dataclass(frozen=True, slots=True)
class IpVerdict:
    """The IP decision for one request; `reason` is a short code, `rule_id` the dynamic rule that decided.

    `expires_at` is when the deciding ban ends (reason `banned` only).
    """

    allowed: bool
    reason: str
    rule_id: str | None = None
    expires_at: float | None = None


_NO_RULES: Final = IpVerdict(True, "no_whitelist")
_WHITELISTED: Final = IpVerdict(True, "whitelisted")
_BLACKLISTED: Final = IpVerdict(False, "blacklisted")
_NOT_WHITELISTED: Final = IpVerdict(False, "not_whitelisted")
_UNKNOWN_ADDRESS: Final = IpVerdict(False, "unknown_address")


def decide(
    ip: str | None,
    *,
    whitelist: IpSet | None,
    blacklist: IpSet,
    dynamic: DynamicRules,
    now: float,
    dynamic_allow: bool = True,
) -> IpVerdict:
    """Whether a client address may pass: deny rules first, then the whitelist if there is one, then bans.

    With `dynamic_allow` false, dynamic allow rules are ignored (dynamic denies still apply):
    for a plane whose whitelist they must not widen, such as the admin API's. A ban is the
    reason only when nothing else refuses the address, so a `banned` verdict means that the
    address passes once the ban is lifted (which is what the admin plane relies on).
    """
    address = parse_ip(ip) if ip is not None else None
    whitelist_applies = bool(whitelist) or (dynamic_allow and dynamic.has_allow(now))
    if address is None:
        return _UNKNOWN_ADDRESS if whitelist_applies else _NO_RULES
    if address in blacklist:
        return _BLACKLISTED
    denied = dynamic.match(address, "deny", now)
    if denied is not None:
        return IpVerdict(False, "dynamic_deny", denied.id)
    verdict = _NO_RULES
    if whitelist_applies:
        if whitelist is not None and address in whitelist:
            verdict = _WHITELISTED
        elif dynamic_allow and (allowed := dynamic.match(address, "allow", now)) is not None:
            verdict = IpVerdict(True, "dynamic_allow", allowed.id)
        else:
            return _NOT_WHITELISTED
    banned = dynamic.match(address, "ban", now)
    if banned is not None:
        return IpVerdict(False, "banned", banned.id, banned.expires_at)
    return verdict


class IpFilter(Policy):
    """Refuses with 403 every request whose client address the lists do not let through."""

    slot = "addresses"

    def __init__(
        self,
        app: ASGIApp,
        *,
        whitelist: IpSet | None,
        blacklist: IpSet,
        dynamic: DynamicRules,
        counters: SecurityCounters,
        clock: Clock = time.time,
        dynamic_allow: bool = True,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        #: None when nothing is recorded: the builder passes a trail only if it has a sink.
        self.audit = audit
        self.dynamic_allow = dynamic_allow
        self.whitelist = whitelist
        self.blacklist = blacklist
        self.dynamic = dynamic
        self.counters = counters
        self.clock = clock
        self._static: dict[str | None, IpVerdict] = {}

    def known_allowed(self, ip: str | None) -> bool:
        """True when a kept verdict of the static lists admits `ip` and no dynamic rule exists."""
        if len(self.dynamic):
            return False
        verdict = self._static.get(ip)
        return verdict is not None and verdict.allowed

    def fast(self, scope: Scope, head: Head) -> bool:
        return self.known_allowed(head.ip)

    def admits(self, ip: str | None) -> bool:
        """Whether these lists would let `ip` through now (nothing counted, audited or kept)."""
        verdict = decide(
            ip,
            whitelist=self.whitelist,
            blacklist=self.blacklist,
            dynamic=self.dynamic,
            now=self.clock(),
            dynamic_allow=self.dynamic_allow,
        )
        return verdict.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope)
        if not self.whitelist and not self.blacklist and not len(self.dynamic):
            await self.app(scope, receive, send)  # no rule at all: nothing to decide
            return
        verdict = self._static.get(ip) if not len(self.dynamic) else None
        if verdict is None:
            verdict = decide(
                ip,
                whitelist=self.whitelist,
                blacklist=self.blacklist,
                dynamic=self.dynamic,
                now=self.clock(),
                dynamic_allow=self.dynamic_allow,
            )
            if not len(self.dynamic):
                # Static lists never change, so their verdicts can be kept (bounded).
                if len(self._static) >= _STATIC_CACHE:
                    self._static.clear()
                self._static[ip] = verdict
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        await refuse(scope, send, verdict, counters=self.counters, audit=self.audit, now=self.clock())


async def refuse(
    scope: Scope,
    send: Send,
    verdict: IpVerdict,
    *,
    counters: SecurityCounters,
    audit: AuditTrail | None,
    now: float,
    message: str = _BLOCKED_MESSAGE,
) -> None:
    """Answer a refused address: 403 `banned` with `Retry-After` for a ban, else 403 `ip_blocked` with `message`."""
    counters.ip_blocked += 1
    counters.violation()
    if audit is not None:
        details = {"rule": verdict.reason, "rule_id": verdict.rule_id}
        fields = request_fields(scope)
        await audit.emit(AuditEvent("ip_block", "request", False, scope.get("path", ""), details=details, **fields))
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
        return
    if verdict.reason != "banned":
        await json_error(send, 403, "ip_blocked", message)
        return
    if verdict.expires_at is None:  # a ban rule written without expiry holds until removed
        await respond_json(send, 403, {"error": "banned", "message": _BANNED_MESSAGE, "retry_after": None})
        return
    wait = max(1, math.ceil(verdict.expires_at - now))
    body = {"error": "banned", "message": _BANNED_MESSAGE, "retry_after": wait}
    await respond_json(send, 403, body, [(b"retry-after", str(wait).encode())])
