"""The OAuth 2.1 resource server of one MCP (`auth.type: oauth2`): a token validator and the scopes it needs.

Tokens are validated by the `jwt` block when there is one, else by RFC 7662 introspection
when configured, else as JWTs signed by the keys the issuer's metadata names. Whatever
validated it, a token must be for this resource (RFC 8707 audience: `oauth2.audience`, else
the MCP's resource URL) and hold every `required_scopes` entry, else 403 insufficient_scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.auth import AuthFailure, Verifier
from mcp_barbican.security.discovery import DiscoveredJwks
from mcp_barbican.security.introspection import IntrospectionRules, Introspector
from mcp_barbican.security.jwt import ClaimRules, JwtVerifier
from mcp_barbican.security.oauth import missing_scopes, resource_for, scope_failure
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.config import JwtConfig, OAuth2Config

__all__ = ["ScopedResource", "oauth_audience", "oauth_resource"]


class ScopedResource:
    """An OAuth validator (JWT or introspection) whose principals must hold `required_scopes`."""

    def __init__(self, inner: Verifier, required_scopes: tuple[str, ...]) -> None:
        self.inner = inner
        self.required_scopes = required_scopes

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        verdict = await self.inner.authenticate(credential)
        if isinstance(verdict, Principal) and self.required_scopes:
            missing = missing_scopes(verdict.scopes, self.required_scopes)
            if missing:
                return scope_failure(missing, self.required_scopes)
        return verdict


def oauth_audience(
    oauth2: OAuth2Config, public_url: str | None, mcp_id: str, *, aggregated: bool = False
) -> frozenset[str]:
    """The audiences a token may name: the configured ones, else this MCP's resource URL.

    `aggregated`: the MCP takes `server.auth`, so it serves in the aggregated endpoint `/mcp` too,
    and a token for that resource is one for this MCP as well.
    """
    if oauth2.audience is not None:
        return frozenset([oauth2.audience] if isinstance(oauth2.audience, str) else oauth2.audience)
    resource = resource_for(oauth2, public_url, mcp_id)
    if resource is None:  # the config check refuses this; a model built without it must still fail closed
        raise ConfigError("set server.public_url or auth.oauth2.audience", path=f"mcps.{mcp_id}.auth.oauth2.audience")
    aggregate = resource_for(oauth2, public_url, None) if aggregated else None
    return frozenset([resource] if aggregate is None else [resource, aggregate])


def oauth_resource(
    oauth2: OAuth2Config, jwt: JwtConfig | None, public_url: str | None, mcp_id: str, *, aggregated: bool = False
) -> ScopedResource:
    """The validator of an `oauth2` block (with the `jwt` block beside it, if any)."""
    inner: Verifier
    if jwt is not None:
        inner = JwtVerifier(jwt)
    elif oauth2.introspection is not None:
        rules = IntrospectionRules(
            oauth_audience(oauth2, public_url, mcp_id, aggregated=aggregated), oauth2.issuer, oauth2.leeway
        )
        inner = Introspector(oauth2.introspection, rules)
    else:
        assert oauth2.issuer is not None  # the config requires it without jwt and introspection
        jwks = DiscoveredJwks(
            oauth2.issuer,
            allowed=frozenset(oauth2.algorithms),
            ttl=oauth2.jwks_cache_ttl,
            cooldown=oauth2.jwks_refresh_cooldown,
        )
        claims = ClaimRules(
            oauth2.issuer, oauth_audience(oauth2, public_url, mcp_id, aggregated=aggregated), {}, oauth2.leeway
        )
        inner = JwtVerifier.with_jwks(jwks, claims)
    return ScopedResource(inner, oauth2.required_scopes)
