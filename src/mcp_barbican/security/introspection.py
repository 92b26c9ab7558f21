"""RFC 7662 token introspection: the authorization server says whether a token is active.

`introspection_verdict` is the pure decision on a response (active, unexpired, for this
resource, from the accepted issuer) and `cache_until` how long it holds; `VerdictCache` is
the bounded LRU table of verdicts, keyed by the SHA-256 of the token (never the token).
`Introspector` ties them to one endpoint: concurrent lookups of one token share one call, and
an endpoint that fails refuses the request with 503 (fail closed), never caching that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from mcp_barbican import egress
from mcp_barbican.security.auth import AuthFailure
from mcp_barbican.security.jwks import ClientSessions, read_json_body
from mcp_barbican.security.principal import Principal

if TYPE_CHECKING:
    from mcp_barbican.config import IntrospectionConfig

__all__ = [
    "MAX_RESPONSE_BYTES",
    "UNAVAILABLE",
    "IntrospectionRules",
    "Introspector",
    "VerdictCache",
    "cache_until",
    "introspection_verdict",
]

logger = logging.getLogger(__name__)

#: A larger introspection response is a failed call (real ones are a few hundred bytes).
MAX_RESPONSE_BYTES: Final = 64 * 1024
#: Longer credentials are refused without a call: access tokens stay far below.
_MAX_TOKEN_CHARS: Final = 16_384
#: The refusal when the endpoint cannot answer: the request fails, nothing is cached.
UNAVAILABLE: Final = AuthFailure("token introspection is unavailable; try again later", "temporarily_unavailable", 503)


@dataclass(frozen=True)
class IntrospectionRules:
    audience: frozenset[str]
    issuer: str | None = None
    leeway: float = 60.0


def _number(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _scopes(response: Mapping[str, Any]) -> tuple[str, ...]:
    scope = response.get("scope")
    return tuple(scope.split()) if isinstance(scope, str) else ()


def introspection_verdict(
    response: Mapping[str, Any], rules: IntrospectionRules, now: float
) -> Principal | AuthFailure:
    """Whether an introspection response admits its token here, and as whom."""
    if response.get("active") is not True:
        return AuthFailure("token is not active")
    exp = response.get("exp")
    if exp is not None and not _number(exp):
        return AuthFailure("invalid claims: 'exp' must be a number")
    if exp is not None and exp <= now - rules.leeway:
        return AuthFailure("token expired")
    aud = response.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
        return AuthFailure("invalid claims: 'aud' is required")
    if rules.audience.isdisjoint(audiences):
        return AuthFailure("invalid claims: 'aud' does not name this resource")
    iss = response.get("iss", rules.issuer)
    if iss is not None and not isinstance(iss, str):
        return AuthFailure("invalid claims: 'iss' must be a string")
    if rules.issuer is not None and iss != rules.issuer:
        return AuthFailure("invalid claims: 'iss' is not the accepted issuer")
    sub, client_id = response.get("sub"), response.get("client_id")
    if isinstance(sub, str) and sub:
        subject = sub
    elif isinstance(client_id, str) and client_id:
        subject = f"client/{client_id}"  # a client_credentials token stands for its client
    else:
        return AuthFailure("invalid claims: 'sub' or 'client_id' is required")
    principal_id = f"oauth:{iss}:{subject}" if iss else f"oauth:{subject}"
    return Principal(id=principal_id, kind="oauth", scopes=_scopes(response), claims=dict(response))


def cache_until(verdict: Principal | AuthFailure, now: float, max_ttl: float, inactive_ttl: float) -> float:
    """Until when (epoch seconds) a verdict may be reused: an active token until its `exp`, at most `max_ttl`."""
    if isinstance(verdict, AuthFailure):
        return now + inactive_ttl
    exp: Any = verdict.claims.get("exp")
    until = now + max_ttl
    return min(until, float(exp)) if _number(exp) else until


class VerdictCache:
    """At most `size` verdicts, least recently used out first, each until its own deadline."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[Principal | AuthFailure, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Principal | AuthFailure | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, verdict: Principal | AuthFailure, until: float, now: float) -> None:
        if until <= now:
            return
        self._entries[key] = (verdict, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class Introspector:
    """Validates bearer tokens by asking one RFC 7662 endpoint (an `Authenticator`)."""

    def __init__(
        self,
        config: IntrospectionConfig,
        rules: IntrospectionRules,
        *,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = config.url
        self.rules = rules
        self.cache = VerdictCache(config.cache_size)
        self.calls = 0
        self._ttl = config.cache_ttl
        self._inactive_ttl = config.inactive_cache_ttl
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        # RFC 6749 §2.3.1: client_secret_basic form-encodes both parts before Base64.
        authorization = aiohttp.encode_basic_auth(
            quote(config.client_id, safe=""), quote(config.client_secret.get_secret_value(), safe="")
        )
        self._headers = {"Accept": "application/json", "Authorization": authorization}
        self._session = ClientSessions(http, "OAuth introspection")
        self._clock = clock
        self._inflight: dict[bytes, asyncio.Future[Principal | AuthFailure]] = {}

    async def start(self) -> None:
        """Nothing to fetch ahead: the endpoint is asked per token."""

    async def aclose(self) -> None:
        await self._session.aclose()

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        if len(credential) > _MAX_TOKEN_CHARS:
            return AuthFailure("malformed token: too long")
        key = hashlib.sha256(credential.encode()).digest()
        cached = self.cache.get(key, self._clock())
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | AuthFailure] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            verdict = await self._introspect(credential)
            now = self._clock()
            if verdict is not UNAVAILABLE:
                self.cache.put(key, verdict, cache_until(verdict, now, self._ttl, self._inactive_ttl), now)
            future.set_result(verdict)
        finally:
            del self._inflight[key]
            if not future.done():
                future.set_result(UNAVAILABLE)
        return verdict

    async def _introspect(self, credential: str) -> Principal | AuthFailure:
        self.calls += 1
        try:
            response = await self._post(credential)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.warning("OAuth introspection %s: failed (%s); refusing with 503", self.url, _reason(exc))
            return UNAVAILABLE
        return introspection_verdict(response, self.rules, self._clock())

    async def _post(self, credential: str) -> Mapping[str, Any]:
        form = {"token": credential, "token_type_hint": "access_token"}
        response = await egress.installed().request(
            self._session(),
            "POST",
            self.url,
            purpose="OAuth introspection",
            data=form,
            timeout=self._timeout,
            headers=self._headers,
        )
        async with response:
            body = await read_json_body(response, MAX_RESPONSE_BYTES)
        document = orjson.loads(body)
        if not isinstance(document, dict):
            raise ValueError("response is not a JSON object")
        return document


def _reason(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__
