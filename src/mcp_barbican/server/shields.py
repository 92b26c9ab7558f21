"""The security services shared by every route, and the per-MCP stack built from them.

Two places decide the order of the layers, because the order is a security decision: the
outer layers are stacked in server/app.py's `build_app`, the per-MCP ones by the pipeline.

    (outer, every route)  security headers (an MCP's own set on its routes) -> client address -> Host/Origin guard
    (every route but health)  dynamic IP rules and bans (the admin guard applies them itself: a valid
                              admin token passes an automatic ban there, never an operator's deny rule)
    (per MCP)  the security pipeline (security/pipeline.py, which owns that order): static IP
               lists -> CORS -> authentication -> rate limits -> input limits -> authorization -> endpoint,
               with one fast path over the same policies for the common request

Rate limiting sits after authentication so it can key on the principal, and so refused
requests never spend a token; the IP filter sits before everything that costs work.
Authentication failures on every route feed one ban list: an MCP's with its own
`auth_failure_ban` block, the MCP list's and the admin API's with `server.security`'s.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from mcp_barbican.asgi import get_header
from mcp_barbican.audit import AuditEvent, AuditTrail
from mcp_barbican.config import SERVER_OWNER
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.addresses import IpSet
from mcp_barbican.security.auth import (
    MISSING_CREDENTIALS,
    Authenticate,
    Authenticator,
    AuthFailure,
    StaticTokens,
    Verifier,
)
from mcp_barbican.security.authorization import AuthorizationPolicy, Authorizer
from mcp_barbican.security.bans import AuthFailureTracker
from mcp_barbican.security.client_ip import TrustedProxies
from mcp_barbican.security.cors import CORS, OriginPolicy
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import IpFilter
from mcp_barbican.security.iprules import DynamicRules
from mcp_barbican.security.jwt import JwtVerifier
from mcp_barbican.security.limits import InputLimits
from mcp_barbican.security.mtls import CertificateAuth, CertificateIdentity
from mcp_barbican.security.oauth import metadata_url, resource_for, www_authenticate
from mcp_barbican.security.pins import PinBook
from mcp_barbican.security.pipeline import Pipeline, PolicyFactory
from mcp_barbican.security.ratelimit import RateLimit, RateLimiter
from mcp_barbican.security.resource import oauth_resource
from mcp_barbican.security.tokens import IssuedTokens
from mcp_barbican.server.quota import SessionQuota
from mcp_barbican.server.seal import Sealer, configured_keys, new_replica_id
from mcp_barbican.storage import IpRule, Storage, Table
from mcp_barbican.storage.memory import MemoryStorage
from mcp_barbican.storage.notices import Unsubscribe
from mcp_barbican.types import ASGIApp, Scope

if TYPE_CHECKING:
    from mcp_barbican.config import AuthConfig, BanConfig, McpConfig, ProxyConfig, SecurityConfig

__all__ = ["Protected", "Shields"]

logger = logging.getLogger(__name__)

#: Bans named one per line in the start-up log; beyond that only their number.
_BANS_LOGGED: Final = 20


class Protected(NamedTuple):
    """One MCP's guarded app, and the parts of it that others consult."""

    app: ASGIApp
    authenticator: Authenticator | None
    cors: OriginPolicy | None
    #: The MCP's static address lists (None: it has none).
    addresses: IpFilter | None
    #: The MCP's compiled authorization policies (no rules: everything allowed).
    authorizer: Authorizer


class Shields:
    """Counters, dynamic IP rules, bans, limiters and verifiers: built once, shared by all MCPs."""

    def __init__(self, config: ProxyConfig, *, store: Storage | None = None, audit: AuditTrail | None = None) -> None:
        self.config = config
        self.audit = audit if audit is not None else AuditTrail([])
        #: What the layers get: the trail when it has a sink, else None (they then skip building events).
        self.recording = self.audit if self.audit.enabled else None
        self.counters = SecurityCounters()
        self.trusted = TrustedProxies.build(config.server.trusted_proxies)
        #: The state store; the dynamic rules and the issued tokens below follow its tables.
        self.store: Storage = store if store is not None else MemoryStorage()
        self.rule_store: Table[IpRule] = self.store.rules
        self.dynamic = DynamicRules()
        self.verifiers: list[Verifier] = []
        #: Client tokens issued through the admin API; every token-auth MCP accepts them (within their scope).
        self.issued = IssuedTokens()
        self.issued.watch(self.store.health, fail_open=config.server.storage.fail_mode.auth == "open")
        #: Downstream sessions per principal, across every MCP (server.limits.max_sessions_per_principal).
        self.sessions = SessionQuota(config.server.limits)
        #: How session ids are made and opened, by every MCP and the aggregated endpoint (server/seal.py).
        self.sealer = Sealer(configured_keys(config), new_replica_id())
        #: Every MCP's tool pins, following the store's pins table.
        self.pins = PinBook(self.store.pins, audit=self.recording, counters=self.counters)
        self._bans: dict[BanConfig, AuthFailureTracker] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._unfollow: list[Unsubscribe] = []

    async def start(self) -> None:
        self._unfollow = [await self.dynamic.follow(self.store.rules), await self.issued.follow(self.store.tokens)]
        await self.pins.start()
        self._unfollow.append(self.pins.stop)
        self.log_bans()
        for verifier in self.verifiers:
            await verifier.start()

    async def stop(self) -> None:
        for tracker in self._bans.values():
            await tracker.flush()
        for verifier in self.verifiers:
            await verifier.aclose()
        for unfollow in self._unfollow:
            unfollow()

    def dynamic_filter(self, app: ASGIApp) -> ASGIApp:
        """Dynamic allow/deny rules and bans, for every route but health."""
        return IpFilter(
            app,
            whitelist=None,
            blacklist=IpSet.build(()),
            dynamic=self.dynamic,
            counters=self.counters,
            audit=self.recording,
        )

    def address_policy(self, security: SecurityConfig) -> PolicyFactory | None:
        """The static address lists of `security` as a pipeline policy (None: it has none)."""
        if not security.ip_whitelist and not security.ip_blacklist:
            return None
        return functools.partial(
            IpFilter,
            whitelist=IpSet.build(security.ip_whitelist) if security.ip_whitelist else None,
            blacklist=IpSet.build(security.ip_blacklist),
            dynamic=DynamicRules(),  # the shared rules were checked already, for every route
            counters=self.counters,
            audit=self.recording,
        )

    def static_filter(self, app: ASGIApp, security: SecurityConfig) -> ASGIApp:
        make = self.address_policy(security)
        return app if make is None else make(app)

    def bans(self, config: BanConfig) -> AuthFailureTracker | None:
        """The failure counter of one `auth_failure_ban` block; every one of them bans into the one rule list.

        Its `ignore` list and the trusted proxies are exempt: banning the proxy in front would ban everyone.
        """
        if not config.enabled:
            return None
        if config not in self._bans:
            self._bans[config] = AuthFailureTracker(
                config,
                rules=self.dynamic,
                counters=self.counters,
                store=self.rule_store,
                exempt=self.config.server.trusted_proxies,
                on_ban=self._audit_ban,
            )
        return self._bans[config]

    def record_failure(self, ip: str | None) -> None:
        """Count an authentication failure on a route of no one MCP (the admin API, the MCP list)."""
        tracker = self.bans(self.config.server.security.auth_failure_ban)
        if tracker is not None:
            tracker.record_failure(ip)

    def log_bans(self) -> None:
        """Say which automatic bans are in force (at start-up: they survive restarts) and how to lift one."""
        now = time.time()
        bans = self.dynamic.bans(now)
        if not bans:
            return
        logger.warning("%d automatic ban(s) in force; lift one with DELETE /admin/security/ip-rules/{id}", len(bans))
        for rule in bans[:_BANS_LOGGED]:
            if rule.expires_at is None:
                until = "removed"
            else:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rule.expires_at))
                until += f" ({math.ceil(rule.expires_at - now)}s from now)"
            logger.warning("ban in force: %s until %s, id %s", rule.cidr, until, rule.id)
        if len(bans) > _BANS_LOGGED:
            logger.warning(
                "... and %d more bans (GET /admin/security/ip-rules lists them all)", len(bans) - _BANS_LOGGED
            )

    def _audit_ban(self, rule: IpRule) -> None:
        details = {"rule_id": rule.id, "expires_at": rule.expires_at, "reason": rule.reason}
        self.audit.emit_soon(AuditEvent("ban", "ban", True, rule.cidr, remote_addr=rule.cidr, details=details))

    def limiter(self, security: SecurityConfig, owner: str) -> RateLimiter | None:
        """One limiter per rate_limit block: MCPs sharing the server default share its global buckets.

        Per-IP buckets group IPv6 clients by the same block's `auth_failure_ban.ipv6_prefix`.
        The buckets live in the state store under a name made of the block's owner (`server`,
        or `mcp:{id}` for an MCP's own block) and a digest of its settings: stable across
        processes, so replicas on one shared store share buckets, and new after a reload that
        changes them.
        """
        config = security.rate_limit
        if config is None:
            return None
        prefix = security.auth_failure_ban.ipv6_prefix
        settings = hashlib.sha256(f"{config.model_dump_json()}/{prefix}".encode()).hexdigest()[:16]
        namespace = f"{owner}/{settings}"
        if namespace not in self._limiters:
            buckets = self.store.buckets(namespace)
            self._limiters[namespace] = RateLimiter.from_config(config, store=buckets, ipv6_prefix=prefix)
        limiter = self._limiters[namespace]
        return limiter if limiter.enabled else None

    def authenticator(self, auth: AuthConfig, mcp: McpConfig, public_url: str | None = None) -> Authenticator:
        if auth.type == "token":
            owner = SERVER_OWNER if mcp.auth is None else f"mcp:{mcp.id}"
            return StaticTokens.from_config(auth, owner=owner, issued=self.issued)
        if auth.type == "jwt" and auth.jwt is not None:
            verifier = JwtVerifier(auth.jwt)
            self.verifiers.append(verifier)
            return verifier
        if auth.type == "oauth2" and auth.oauth2 is not None:
            if public_url is None:
                public_url = self.config.server.public_url
            resource = oauth_resource(auth.oauth2, auth.jwt, public_url, mcp.id, aggregated=mcp.auth is None)
            self.verifiers.append(resource)
            return resource
        if auth.type == "mtls" and auth.mtls is not None:
            tls = self.config.server.tls
            if tls is None or not tls.enabled or tls.client_auth == "none":
                # The file's check covers configured MCPs; this one covers MCPs registered through the API.
                raise ConfigError("type mtls needs server.tls client_auth", path=f"mcps.{mcp.id}.auth.type")
            return CertificateIdentity(auth.mtls)
        raise ConfigError(f"auth type {auth.type!r} needs its settings", path=f"mcps.{mcp.id}.auth")

    def protect(self, endpoint: ASGIApp, mcp: McpConfig, config: ProxyConfig | None = None) -> Protected:
        """The guarded app of one MCP, and the parts of it the MCP list and the Origin guard consult.

        The pipeline orders its policies by their slots (security/pipeline.py ORDER); `policies`
        says which apply. A new policy is one more line there. `config` is the one `mcp` will be
        served under (default: the live one; a change builds against the config it stages).
        """
        config = config if config is not None else self.config
        auth = config.effective_auth(mcp)
        authenticator = self.authenticator(auth, mcp, config.server.public_url) if auth.type != "none" else None
        pipeline = Pipeline(endpoint, self.policies(mcp, authenticator, config))
        cors = pipeline.policy("cors")
        addresses = pipeline.policy("addresses")
        authorization = pipeline.policy("authorization")
        return Protected(
            pipeline,
            authenticator,
            cors.policy if isinstance(cors, CORS) else None,
            addresses if isinstance(addresses, IpFilter) else None,
            authorization.authorizer if isinstance(authorization, AuthorizationPolicy) else Authorizer(None, mcp.id),
        )

    def policies(self, mcp: McpConfig, authenticator: Authenticator | None, config: ProxyConfig) -> list[PolicyFactory]:
        """The policies that apply to `mcp`, in any order (the pipeline orders them by slot)."""
        auth = config.effective_auth(mcp)
        security = config.effective_security(mcp)
        owner = "server" if mcp.security is None else f"mcp:{mcp.id}"
        policies = (
            self.address_policy(security),
            self.cors_policy(security),
            self.auth_policy(auth, authenticator, security, mcp.id, config.server.public_url),
            self.rate_policy(security, owner, mcp.id),
            functools.partial(InputLimits, limits=security.limits, counters=self.counters),
            self.authorization_policy(self.authorizer_for(mcp, config)),
        )
        return [policy for policy in policies if policy is not None]

    def authorizer_for(self, mcp: McpConfig, config: ProxyConfig | None = None) -> Authorizer:
        """The compiled policies of `mcp` (no rules: everything allowed)."""
        config = config if config is not None else self.config
        return Authorizer(config.effective_authorization(mcp), mcp.id)

    def authorization_policy(self, authorizer: Authorizer) -> PolicyFactory | None:
        if not authorizer.active:
            return None
        return functools.partial(
            AuthorizationPolicy, authorizer=authorizer, counters=self.counters, audit=self.recording
        )

    def cors_policy(self, security: SecurityConfig) -> PolicyFactory | None:
        if security.cors is None or not security.cors.enabled:
            return None
        return functools.partial(CORS, config=security.cors, counters=self.counters)

    def auth_policy(
        self,
        auth: AuthConfig,
        authenticator: Authenticator | None,
        security: SecurityConfig,
        mcp_id: str,
        public_url: str | None = None,
    ) -> PolicyFactory | None:
        if authenticator is None:
            return None
        tracker = self.bans(security.auth_failure_ban)
        return functools.partial(
            CertificateAuth if isinstance(authenticator, CertificateIdentity) else Authenticate,
            authenticator=authenticator,
            header=auth.header,
            prefix=auth.prefix,
            mcp_id=mcp_id,
            counters=self.counters,
            challenge=challenge_for(auth, mcp_id, public_url),
            on_failure=tracker.record_failure if tracker is not None else None,
            audit=self.recording,
        )

    def rate_policy(self, security: SecurityConfig, owner: str, mcp_id: str) -> PolicyFactory | None:
        limiter = self.limiter(security, owner)
        if limiter is None:
            return None
        return functools.partial(
            RateLimit, limiter=limiter, mcp_id=mcp_id, counters=self.counters, audit=self.recording
        )


def resource_url(scope: Scope, mcp_id: str | None) -> str:
    """This MCP's public URL as the client reached it (the Host header was validated before); None: /mcp's."""
    host = get_header(scope, b"host") or b"localhost"
    path = "/mcp" if mcp_id is None else f"/mcp/{mcp_id}"
    return f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}{path}"


def challenge_for(auth: AuthConfig, mcp_id: str, public_url: str | None = None) -> Callable[[AuthFailure, Scope], str]:
    """The WWW-Authenticate value of a refusal (RFC 6750 section 3; RFC 9728 for OAuth)."""
    oauth2 = auth.oauth2
    configured = resource_for(oauth2, public_url, mcp_id) if oauth2 is not None else None

    def challenge(failure: AuthFailure, scope: Scope) -> str:
        error = None if failure.reason == MISSING_CREDENTIALS else failure.error
        metadata = None
        if oauth2 is not None:
            metadata = metadata_url(configured or resource_url(scope, mcp_id))
        return www_authenticate(
            mcp_id, error=error, description=failure.reason, resource_metadata=metadata, scope=failure.scope
        )

    return challenge
