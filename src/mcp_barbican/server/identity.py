"""What one MCP's upstream learns of the caller (`mcps[].upstream_auth`), per principal.

`identity_headers` are computed once per client session from its principal (a JWT's claims
are those of the token that opened the session); a header whose value cannot be sent is left
out and logged once per MCP and header, never with the value. Channels read the headers on
every request, so in shared mode (one upstream session per principal) they are that
principal's. The proxy's own upstream sessions (the start-up probe, the admin API's listing,
sessionless requests) carry only the static `headers`; a per-principal MCP keeps no
pre-opened spare session, since no principal's identity would be on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from mcp_barbican.security.identity import identity_headers
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.config.upstream_auth import UpstreamAuthConfig
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

    def headers_for(self, principal: object) -> IdentityHeaders | None:
        """What a session of `principal` sends upstream besides the static headers (None: nothing)."""
        config = self.config
        if config is None or not isinstance(principal, Principal):
            return None
        if config.type == "identity_headers":
            headers = self._identity_headers(principal, config.identity_headers)
            return lambda: headers
        return None

    def _identity_headers(self, principal: Principal, mapping: Mapping[str, str]) -> dict[str, str]:
        headers, left_out = identity_headers(principal, mapping)
        for name, reason in left_out:
            if (name, reason) not in self._logged and len(self._logged) < _LOGGED_MAX:
                self._logged.add((name, reason))
                logger.warning("MCP %r: identity header %s left out: %s", self.mcp_id, name, reason)
        return headers
