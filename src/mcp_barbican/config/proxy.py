"""The whole config file (`ProxyConfig`) and the checks that span its MCPs and server block."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Self

from pydantic import SecretStr, model_validator

from mcp_barbican.config.auth import AuthConfig, TokenEntry, sha256_hex
from mcp_barbican.config.authorization import AuthorizationConfig
from mcp_barbican.config.errors import Loc, LocatedError, format_path
from mcp_barbican.config.fields import Model
from mcp_barbican.config.integrity import IntegrityConfig
from mcp_barbican.config.mcp import McpConfig
from mcp_barbican.config.security import SecurityConfig
from mcp_barbican.config.server import ServerConfig
from mcp_barbican.exceptions import ConfigError

__all__ = ["ProxyConfig"]


class ProxyConfig(Model):
    """The whole validated config file."""

    server: ServerConfig = ServerConfig()
    mcps: tuple[McpConfig, ...]

    @model_validator(mode="after")
    def _check(self) -> Self:
        self._check_unique_ids()
        for index, mcp in enumerate(self.mcps):
            if mcp.auth is None and self.server.auth is None:
                raise LocatedError(
                    ("mcps", index, "auth"),
                    f"no auth configured: set mcps[{index}].auth or server.auth (type: none must be explicit)",
                )
        self._check_admin_tokens_distinct()
        self._check_token_ids()
        self._check_oauth2_audience()
        self._check_mtls()
        self._check_token_exchange()
        return self

    def _check_oauth2_audience(self) -> None:
        """An OAuth audience defaults to the MCP's resource URL, which needs server.public_url (fail closed)."""
        if self.server.public_url is not None:
            return
        blocks: list[tuple[Loc, AuthConfig | None]] = [(("server", "auth"), self.server.auth)]
        blocks += [(("mcps", index, "auth"), mcp.auth) for index, mcp in enumerate(self.mcps)]
        for loc, auth in blocks:
            oauth2 = auth.oauth2 if auth is not None and auth.type == "oauth2" else None
            if oauth2 is not None and auth is not None and auth.jwt is None:
                if oauth2.audience is None and oauth2.resource is None:
                    raise LocatedError(
                        (*loc, "oauth2", "audience"),
                        "required without server.public_url: tokens must be for this resource (RFC 8707); "
                        "set server.public_url (the audience becomes it + /mcp/{id}) or an explicit audience",
                    )

    def _check_token_exchange(self) -> None:
        """The subject token of an exchange is the caller's bearer credential: mtls and none have none."""
        for index, mcp in enumerate(self.mcps):
            upstream = mcp.upstream_auth
            auth = mcp.auth if mcp.auth is not None else self.server.auth
            if upstream is not None and upstream.type == "token_exchange" and auth is not None:
                if auth.type in ("mtls", "none"):
                    raise LocatedError(
                        ("mcps", index, "upstream_auth", "type"),
                        f"token_exchange needs a bearer credential to exchange; this MCP's auth is {auth.type}",
                    )

    def _check_mtls(self) -> None:
        """Certificate identities need a listener that asks for and verifies client certificates."""
        tls = self.server.tls
        blocks: list[tuple[Loc, AuthConfig | None]] = [(("server", "auth"), self.server.auth)]
        blocks += [(("mcps", index, "auth"), mcp.auth) for index, mcp in enumerate(self.mcps)]
        for loc, auth in blocks:
            if auth is None or auth.type != "mtls":
                continue
            if tls is None or not tls.enabled or tls.client_auth == "none":
                raise LocatedError(
                    (*loc, "type"),
                    "type mtls needs server.tls.enabled: true and server.tls.client_auth: optional or required",
                )

    def _check_unique_ids(self) -> None:
        seen: dict[str, int] = {}
        for index, mcp in enumerate(self.mcps):
            if mcp.id in seen:
                raise LocatedError(("mcps", index, "id"), f"duplicate id {mcp.id!r} (also mcps[{seen[mcp.id]}])")
            seen[mcp.id] = index

    def _check_admin_tokens_distinct(self) -> None:
        auths = [self.server.auth, *(mcp.auth for mcp in self.mcps)]
        client = {digest for auth in auths if auth is not None for digest in auth.client_token_digests()}
        admin = self.server.admin
        candidates: list[tuple[Loc, SecretStr]] = [(("token",), admin.token)] if admin.token is not None else []
        candidates += [(("tokens", index), token) for index, token in enumerate(admin.tokens)]
        for loc, token in candidates:
            if sha256_hex(token) in client:
                raise LocatedError(("server", "admin", *loc), "must differ from every client token")

    def listed_tokens(self) -> Iterator[tuple[Loc, TokenEntry]]:
        """Every `auth.tokens` entry of the file, with its key path (server.auth's first)."""
        blocks: list[tuple[Loc, AuthConfig | None]] = [(("server", "auth"), self.server.auth)]
        blocks += [(("mcps", index, "auth"), mcp.auth) for index, mcp in enumerate(self.mcps)]
        for loc, auth in blocks:
            for index, entry in enumerate(auth.tokens if auth is not None else ()):
                yield (*loc, "tokens", index, "id"), entry

    def _check_token_ids(self) -> None:
        """One id names one credential across the file: principals `token:{id}` never collide."""
        seen: dict[str, tuple[Loc, str]] = {}
        for loc, entry in self.listed_tokens():
            first = seen.setdefault(entry.id, (loc, entry.digest()))
            if first[1] != entry.digest():
                raise LocatedError(
                    loc,
                    f"token id {entry.id!r} is also {format_path(first[0])}, with another token: an id names one "
                    f"credential across the file (its principal is token:{entry.id})",
                )

    def effective_auth(self, mcp: McpConfig) -> AuthConfig:
        """The client authentication of `mcp`: its own `auth`, else `server.auth`."""
        auth = mcp.auth if mcp.auth is not None else self.server.auth
        if auth is None:
            # Only reachable for a model built without validation (model_construct / model_copy).
            raise ConfigError(f"no auth configured for MCP {mcp.id!r}: set its auth or server.auth", path="server.auth")
        return auth

    def effective_authorization(self, mcp: McpConfig) -> AuthorizationConfig | None:
        """The authorization of `mcp`: its own block, else `server.authorization` (replaced, never merged)."""
        return mcp.authorization if mcp.authorization is not None else self.server.authorization

    def effective_integrity(self, mcp: McpConfig) -> IntegrityConfig:
        """The tool integrity of `mcp`: its own block, else `server.integrity` (replaced, never merged)."""
        return mcp.integrity if mcp.integrity is not None else self.server.integrity

    def effective_security(self, mcp: McpConfig) -> SecurityConfig:
        """The security block of `mcp`: its own `security`, else `server.security`.

        A per-MCP block replaces the server default as a whole; nothing is merged key by key,
        so an MCP that sets only `rate_limit` gets no IP lists from the server block.
        """
        return mcp.security if mcp.security is not None else self.server.security

    def mcp(self, mcp_id: str) -> McpConfig | None:
        """The MCP with this id, if any."""
        return next((mcp for mcp in self.mcps if mcp.id == mcp_id), None)
