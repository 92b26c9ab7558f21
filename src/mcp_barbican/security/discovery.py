"""An authorization server's signing keys, found through its metadata (RFC 8414, OpenID Connect Discovery).

`metadata_urls` and `jwks_uri_from_metadata` are the pure decisions: where the metadata of an
issuer lives, and which `jwks_uri` a document names, if its `issuer` is exactly the configured
one (RFC 8414 §3.3: otherwise another server could name keys for this issuer). `DiscoveredJwks`
is a `JwksCache` whose URL comes from that metadata, looked up again when the keys are refreshed
after their TTL, so an issuer that moves its keys is followed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from mcp_barbican.egress import EgressRefused
from mcp_barbican.security.jwks import MAX_JWKS_BYTES, JwksCache, fetch_json

__all__ = ["MAX_METADATA_BYTES", "DiscoveredJwks", "discover_jwks_uri", "jwks_uri_from_metadata", "metadata_urls"]

logger = logging.getLogger(__name__)

#: A larger metadata document is a failed fetch (real ones are a few KiB).
MAX_METADATA_BYTES: Final = 256 * 1024
_MAX_SHOWN: Final = 100


def metadata_urls(issuer: str) -> tuple[str, str]:
    """RFC 8414 §3.1 (well-known path before the issuer's path), then OIDC Discovery (appended to it)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))
    oidc = urlunsplit((parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", ""))
    return rfc8414, oidc


def _shown(value: object) -> str:
    return ascii(str(value)[:_MAX_SHOWN])


def jwks_uri_from_metadata(document: object, issuer: str) -> str:
    """The `jwks_uri` of an authorization server's metadata document; ValueError saying why there is none."""
    if not isinstance(document, dict):
        raise ValueError("metadata is not a JSON object")
    if document.get("issuer") != issuer:
        raise ValueError(f"metadata issuer {_shown(document.get('issuer'))} is not the configured issuer")
    uri = document.get("jwks_uri")
    if not isinstance(uri, str):
        raise ValueError("metadata has no jwks_uri")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"metadata jwks_uri {_shown(uri)} is not an http(s) URL")
    return uri


async def discover_jwks_uri(session: aiohttp.ClientSession, issuer: str) -> str:
    """Ask the issuer's RFC 8414 metadata, then its OIDC metadata; ValueError naming both failures."""
    problems = []
    for url in metadata_urls(issuer):
        try:
            return jwks_uri_from_metadata(await fetch_json(session, url, MAX_METADATA_BYTES, "OAuth metadata"), issuer)
        except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
            refused = isinstance(exc, EgressRefused)  # its message names the URL already
            problems.append(str(exc) if refused else f"{url}: {str(exc) or type(exc).__name__}")
    raise ValueError("no usable authorization server metadata (" + "; ".join(problems) + ")")


class DiscoveredJwks(JwksCache):
    """The JWKS of an issuer, at the `jwks_uri` its metadata names (looked up again once `ttl` passed)."""

    def __init__(
        self,
        issuer: str,
        *,
        allowed: frozenset[str],
        ttl: float,
        cooldown: float,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(issuer, allowed=allowed, ttl=ttl, cooldown=cooldown, http=http, clock=clock)
        self.issuer = issuer
        self.jwks_uri: str | None = None
        self._discovered_at = 0.0

    async def _download(self) -> object:
        session = self._session()
        if self.jwks_uri is None or self._clock() - self._discovered_at >= self.ttl:
            uri = await discover_jwks_uri(session, self.issuer)
            if uri != self.jwks_uri:
                logger.info("OAuth issuer %s: signing keys at %s", self.issuer, uri)
            self.jwks_uri, self.url, self._discovered_at = uri, uri, self._clock()
        return await fetch_json(session, self.jwks_uri, MAX_JWKS_BYTES)
