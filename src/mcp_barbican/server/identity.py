"""What one MCP's upstream learns of the caller (`mcps[].upstream_auth`), per principal.

`token_exchange` exchanges the caller's credential at the token endpoint (upstream/exchange.py)
before each request that needs it, and the channels read the principal's current token.
`identity_headers` are computed once per client session from its principal (a JWT's claims
are those of the token that opened the session); a header whose value cannot be sent is left
out and logged once per MCP and header, never with the value. Channels read the headers on
every request, so in shared mode (one upstream session per principal) they are that
principal's. The proxy's own upstream sessions (the start-up probe, the admin API's listing,
sessionless requests) carry only the static `headers`; a per-principal MCP keeps no
pre-opened spare session, since no principal's identity would be on it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import PRINCIPAL_KEY, rpc_error
from mcp_barbican.security.auth import CREDENTIAL_KEY
from mcp_barbican.security.identity import identity_headers
from mcp_barbican.security.principal import Principal
from mcp_barbican.upstream.exchange import ExchangeFailed, TokenExchange

if TYPE_CHECKING:
    from mcp_barbican.config.upstream_auth import UpstreamAuthConfig
    from mcp_barbican.types import Scope, Send
    from mcp_barbican.upstream.base import IdentityHeaders

__all__ = ["UpstreamIdentity"]

logger = logging.getLogger(__name__)

#: (header, reason) pairs logged per MCP before the log stops repeating itself.
_LOGGED_MAX: Final = 256


class UpstreamIdentity:
    """The upstream identity of each caller of one MCP."""

    def __init__(self, mcp_id: str, config: UpstreamAuthConfig | None) -> None:
        self.mcp_id = mcp_id
        self.config = config
        #: Whether upstream requests differ per caller: then no upstream session serves two principals.
        self.per_principal = config is not None and config.per_principal
        self._logged: set[tuple[str, str]] = set()
        exchange = config.token_exchange if config is not None and config.type == "token_exchange" else None
        #: Exchanged tokens per principal (None unless type token_exchange).
        self.exchange = TokenExchange(exchange) if exchange is not None else None

    def headers_for(self, principal: object) -> IdentityHeaders | None:
        """What a session of `principal` sends upstream besides the static headers (None: nothing)."""
        config = self.config
        if config is None or not isinstance(principal, Principal):
            return None
        if config.type == "identity_headers":
            headers = self._identity_headers(principal, config.identity_headers)
            return lambda: headers
        if self.exchange is not None:
            return functools.partial(self.exchange.current, principal.id)
        return None

    async def ready(self, scope: Scope, send: Send, request_id: Any) -> bool:
        """Whether the request's caller has what its upstream requests need; else answer 502/503 and say why."""
        exchange = self.exchange
        principal = scope.get(PRINCIPAL_KEY)
        if exchange is None or not isinstance(principal, Principal):
            return True
        raw = scope.get(CREDENTIAL_KEY)
        # The header as accepted by authentication: "<prefix> <token>", or the bare token.
        subject = raw.decode("latin-1").strip().rpartition(" ")[2] if isinstance(raw, bytes) else ""
        try:
            if not subject:
                raise ExchangeFailed("no credential to exchange", 502)
            await exchange.ensure(principal.id, subject)
        except ExchangeFailed as exc:
            logger.warning("MCP %r: token exchange for %s failed: %s", self.mcp_id, principal.id, exc)
            message = f"token exchange for MCP {self.mcp_id!r} failed: {exc}"
            await rpc_error(send, exc.status, jsonrpc.UPSTREAM_ERROR, message, request_id)
            return False
        return True

    async def aclose(self) -> None:
        if self.exchange is not None:
            await self.exchange.aclose()

    def _identity_headers(self, principal: Principal, mapping: Mapping[str, str]) -> dict[str, str]:
        headers, left_out = identity_headers(principal, mapping)
        for name, reason in left_out:
            if (name, reason) not in self._logged and len(self._logged) < _LOGGED_MAX:
                self._logged.add((name, reason))
                logger.warning("MCP %r: identity header %s left out: %s", self.mcp_id, name, reason)
        return headers
