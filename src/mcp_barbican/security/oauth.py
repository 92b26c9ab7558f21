"""What an OAuth 2.0 resource server tells clients: RFC 9728 metadata and the RFC 6750 challenge.

The MCP authorization spec makes the proxy a resource server: a 401 carries
`WWW-Authenticate: Bearer ...` (with `resource_metadata` pointing at the metadata
document), and the metadata names the authorization servers that issue tokens for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from mcp_barbican.security.auth import AuthFailure

if TYPE_CHECKING:
    from mcp_barbican.config import JwtConfig, OAuth2Config

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "WELL_KNOWN_PATH",
    "metadata_url",
    "missing_scopes",
    "protected_resource_metadata",
    "resource_for",
    "scope_failure",
    "www_authenticate",
]

#: The well-known path prefix of RFC 9728 §3 (the resource's own path follows it).
WELL_KNOWN_PATH: Final = "/.well-known/oauth-protected-resource"
#: Longer descriptions are cut: a header carries a hint, not a report.
MAX_DESCRIPTION_CHARS: Final = 200


def resource_for(oauth2: OAuth2Config, public_url: str | None, mcp_id: str | None) -> str | None:
    """This MCP's resource identifier when the config says it: `oauth2.resource`, else `public_url` + /mcp/{id}.

    `mcp_id` None: the aggregated endpoint's, `public_url` + /mcp.
    """
    if oauth2.resource is not None:
        return oauth2.resource
    path = "/mcp" if mcp_id is None else f"/mcp/{mcp_id}"
    return f"{public_url.rstrip('/')}{path}" if public_url is not None else None


def protected_resource_metadata(resource: str, oauth2: OAuth2Config, jwt: JwtConfig | None) -> dict[str, Any]:
    """The RFC 9728 document for `resource` (the configured `oauth2.resource` wins, for proxies behind proxies)."""
    document: dict[str, Any] = {
        "resource": oauth2.resource or resource,
        "authorization_servers": list(oauth2.servers()),
    }
    scopes = oauth2.scopes_supported or oauth2.required_scopes
    if scopes:
        document["scopes_supported"] = list(scopes)
    document["bearer_methods_supported"] = ["header"]
    if jwt is not None and jwt.jwks_url is not None:
        document["jwks_uri"] = jwt.jwks_url
    return document


def missing_scopes(granted: Iterable[str], required: Iterable[str]) -> tuple[str, ...]:
    """The required scopes a token was not granted, in the configured order."""
    have = set(granted)
    return tuple(scope for scope in required if scope not in have)


def scope_failure(missing: tuple[str, ...], required: tuple[str, ...]) -> AuthFailure:
    """403 insufficient_scope naming what is missing; the challenge asks for every required scope (step-up)."""
    return AuthFailure(f"missing scope: {' '.join(missing)}", "insufficient_scope", 403, scope=" ".join(required))


def metadata_url(resource: str) -> str:
    """Where RFC 9728 §3.1 serves the metadata of `resource`: the well-known path goes before its path."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN_PATH + path, parts.query, ""))


def _printable(value: str) -> str:
    # Only visible ASCII and space: no CR/LF to split the header, nothing latin-1 cannot carry.
    return "".join(char if " " <= char <= "~" else "?" for char in value)


def _rfc6750(value: str) -> str:
    # RFC 6750 §3 leaves '"' and '\' out of error, error_description and scope even when escaped.
    return _printable(value).replace('"', "'").replace("\\", "/")


def _quoted(value: str) -> str:
    escaped = _printable(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def www_authenticate(
    realm: str,
    *,
    error: str | None = None,
    description: str | None = None,
    resource_metadata: str | None = None,
    scope: str | None = None,
) -> str:
    """A `WWW-Authenticate` value: `Bearer realm="...", error="...", error_description="...", ...`.

    Leave `error` out when the request carried no credential (RFC 6750 §3.1). Empty or None
    parameters are omitted. Every value is quoted and made safe for one header line.
    """
    params = [("realm", realm)]
    if error:
        params.append(("error", _rfc6750(error)))
    if description:
        params.append(("error_description", _rfc6750(description[:MAX_DESCRIPTION_CHARS])))
    if scope:
        params.append(("scope", _rfc6750(scope)))
    if resource_metadata:
        params.append(("resource_metadata", resource_metadata))
    return "Bearer " + ", ".join(f"{name}={_quoted(value)}" for name, value in params)
