"""Which MCPs a request's credential reaches: the MCP list and the aggregated endpoint ask alike.

An MCP is reached when its authentication accepts the credential (or it has none), its own
address lists admit the client, and its authorization lets the caller use something. A
credential that no MCP accepts is an authentication failure and counts toward a ban, also when
MCPs without authentication still reach everyone: else these routes would be a free oracle for
guessing tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mcp_barbican.asgi import CLIENT_IP_KEY, json_error, repeated_header
from mcp_barbican.security.auth import MISSING_CREDENTIALS, AuthFailure
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.server.control import McpRoute
    from mcp_barbican.server.shields import Shields
    from mcp_barbican.types import Scope, Send

__all__ = ["Reach", "reach", "refuse_unreached"]

_CHALLENGE: Final = b'Bearer realm="mcp-barbican", error="invalid_token"'


@dataclass(frozen=True)
class Reach:
    """The MCPs reached, in table order, each with the principal it authenticated (None: it has no auth)."""

    routes: tuple[tuple[McpRoute, Principal | None], ...]
    #: Whether some MCP authenticated the credential.
    authenticated: bool
    #: Whether the request counts as an authentication failure.
    failed: bool

    @functools.cached_property
    def principal_ids(self) -> dict[str, str | None]:
        """The principal id each reached MCP named (None: it has no authentication)."""
        return {route.mcp.id: principal.id if principal is not None else None for route, principal in self.routes}

    @functools.cached_property
    def principal(self) -> Principal | None:
        """The caller, the same whichever MCP is asked first: the least principal id of the reached MCPs."""
        found = [principal for _route, principal in self.routes if principal is not None]
        return min(found, key=lambda principal: principal.id) if found else None


async def reach(routes: Iterable[McpRoute], scope: Scope) -> Reach | str:
    """The MCPs the request reaches; a reason to refuse it (400) when a credential header is repeated."""
    table = list(routes)  # the control plane may change the table while verdicts are awaited
    for name in sorted({r.auth.header for r in table if r.authenticator is not None}):
        if repeated_header(scope, name.lower().encode("latin-1")):
            return f"more than one {name} header"
    verdicts = [(route, await route.verdict(scope)) for route in table]
    reached = tuple(
        (r, v if isinstance(v, Principal) else None)
        for r, v in verdicts
        if (v is None or (isinstance(v, Principal) and v.reaches(r.mcp.id)))
        and r.addresses_admit(scope)
        and r.allows_anything(v if isinstance(v, Principal) else None)
    )
    refused = [v for _, v in verdicts if isinstance(v, AuthFailure)]
    authenticated = any(isinstance(v, Principal) for _, v in verdicts)
    presented = any(v.reason != MISSING_CREDENTIALS for v in refused)
    failed = bool(refused) and not authenticated and (presented or not reached)
    return Reach(reached, authenticated, failed)


async def refuse_unreached(
    shields: Shields, scope: Scope, send: Send, found: Reach | str, challenge: Callable[[Scope], bytes] | None = None
) -> bool:
    """Answer 400 or 401 when the request reaches nothing it may use; count a failure; whether it answered."""
    if isinstance(found, str):
        await json_error(send, 400, "invalid_request", found)
        return True
    if found.failed:
        shields.record_failure(scope.get(CLIENT_IP_KEY))
    if found.routes or found.authenticated:  # a valid credential whose MCPs all refuse this address: nothing
        return False
    shields.counters.authentication_failures += 1
    shields.counters.violation()
    value = challenge(scope) if challenge is not None else _CHALLENGE
    await json_error(send, 401, "invalid_token", "no MCP accepts this credential", [(b"www-authenticate", value)])
    return True
