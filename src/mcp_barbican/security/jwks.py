"""JWKS (RFC 7517): the signing keys an identity provider publishes, fetched and kept fresh.

`parse_jwks` is the pure decision of which published keys may verify which algorithms;
`JwksCache` keeps the set of one JWKS URL for `jwt.JwtVerifier`. Every key is bound to the
algorithms it may verify (`VerificationKey`), taken from its own type and the configured
allowlist, so a token's `alg` header can only pick among them; public keys only, never an
HMAC secret. The set is fetched with a TTL; a `kid` it lacks starts one shared refresh at
most once per cooldown; a failed fetch keeps the last good key set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import jwt
import orjson

from mcp_barbican import egress
from mcp_barbican.keys import PUBLIC_KEY_TYPES, PublicKey, compatible_algorithms

__all__ = [
    "JWKS_FETCH_TIMEOUT",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "JwksCache",
    "VerificationKey",
    "fetch_json",
    "parse_jwks",
    "shown",
]

logger = logging.getLogger(__name__)

#: Keys kept from one JWKS: identity providers publish a handful, and memory stays bounded.
MAX_JWKS_KEYS: Final = 100
#: A larger JWKS document is a failed fetch, so a hostile endpoint cannot fill memory.
MAX_JWKS_BYTES: Final = 512 * 1024
#: Seconds a JWKS fetch may take before it counts as failed (the last good keys stay).
JWKS_FETCH_TIMEOUT: Final = 10.0
#: How much of an attacker-chosen header value (`alg`, `kid`) a reason quotes.
_SHOWN_CHARS: Final = 40


def shown(value: str) -> str:
    """An attacker-chosen value (`alg`, `kid`) as a reason or a log line may quote it: shortened, ASCII-escaped."""
    return ascii(value[:_SHOWN_CHARS])


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class VerificationKey:
    """A key and the algorithms it may verify; `kid` None matches any token `kid`."""

    kid: str | None
    key: PublicKey | bytes = field(repr=False)
    algorithms: frozenset[str]

    def verifies(self, alg: str, kid: str | None) -> bool:
        return alg in self.algorithms and (kid is None or self.kid is None or self.kid == kid)


def _jwks_key(raw: object, allowed: frozenset[str]) -> VerificationKey | None:
    if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
        return None
    ops = raw.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid, alg = raw.get("kid"), raw.get("alg")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
        return None
    try:
        key = jwt.PyJWK(raw).key
    except Exception:  # one bad key in a published set must not spoil the others
        logger.debug("JWKS: skipping a key that does not parse (kid %s)", shown(str(kid)))
        return None
    # Public keys only: a published symmetric key is no secret, and a published private key is a leak.
    if not isinstance(key, PUBLIC_KEY_TYPES):
        return None
    algorithms = compatible_algorithms(key) & allowed
    if alg is not None:
        algorithms &= {alg}
    return VerificationKey(kid, key, algorithms) if algorithms else None


def parse_jwks(document: object, allowed: frozenset[str], limit: int = MAX_JWKS_KEYS) -> tuple[VerificationKey, ...]:
    """The usable signing keys of a JWK Set (at most `limit`); ValueError if it is not one.

    Kept: keys for signatures (`use` absent or `sig`, `key_ops` absent or with `verify`),
    public, of a type that verifies an allowed algorithm (the key's own `alg` if it names one).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set (no 'keys' list)")
    keys: list[VerificationKey] = []
    for raw in document["keys"]:
        key = _jwks_key(raw, allowed)
        if key is not None:
            keys.append(key)
            if len(keys) == limit:
                break
    return tuple(keys)


# ---------------------------------------------------------------------------------------------
# The cache


async def fetch_json(session: aiohttp.ClientSession, url: str, max_bytes: int, purpose: str = "JWKS") -> object:
    """GET `url` as JSON: status 200, at most `max_bytes`, within JWKS_FETCH_TIMEOUT; ValueError otherwise.

    The URL passes the egress policy (EgressRefused, an aiohttp.ClientError, names it and why).
    """
    timeout = aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT)
    # No redirects: the configured URL is the trusted source, not wherever it points.
    response = await egress.installed().request(
        session, "GET", url, purpose=purpose, timeout=timeout, headers={"Accept": "application/json"}
    )
    async with response:
        return orjson.loads(await read_json_body(response, max_bytes))


class ClientSessions:
    """The aiohttp session to fetch with: the one `http` gives (tests), else one of its own, opened on first use
    (its connections go through the egress policy's resolver)."""

    def __init__(self, http: Callable[[], aiohttp.ClientSession] | None = None, purpose: str = "JWKS") -> None:
        self._http = http
        self._purpose = purpose
        self._own: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._http is not None:
            return self._http()
        if self._own is None or self._own.closed:
            self._own = egress.installed().session(self._purpose)
        return self._own

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None


async def read_json_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body of a 200 answer, read until `max_bytes` at most; ValueError for another status or more bytes."""
    if response.status != 200:
        raise ValueError(f"HTTP status {response.status}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise ValueError(f"larger than {max_bytes} bytes")
    return bytes(body)


class JwksCache:
    """The signing keys published at one JWKS URL.

    Fetched by `start()` and again once `ttl` has passed (in the background: the current
    keys verify meanwhile). A token whose `kid` no key has waits for a refresh; concurrent
    ones share it, and fetches happen at most once per `cooldown` whatever asks for them.
    A failed fetch (network, status, size, JSON, no usable key) keeps the last good set.
    """

    def __init__(
        self,
        url: str,
        *,
        allowed: frozenset[str],
        ttl: float,
        cooldown: float,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.allowed = allowed
        self.ttl = ttl
        self.cooldown = cooldown
        self.keys: tuple[VerificationKey, ...] = ()
        self.fetches_ok = 0
        self.fetches_failed = 0
        self._session = ClientSessions(http)
        self._clock = clock
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    def matching(self, alg: str, kid: str | None) -> list[VerificationKey]:
        return [key for key in self.keys if key.verifies(alg, kid)]

    async def keys_for(self, alg: str, kid: str | None) -> list[VerificationKey]:
        found = self.matching(alg, kid)
        if not found:
            task = self._refresh()
            if task is not None:
                await asyncio.shield(task)  # a caller that gives up must not cancel the shared fetch
                found = self.matching(alg, kid)
        elif self._fetched_at is None or self._clock() - self._fetched_at >= self.ttl:
            self._refresh()
        return found

    async def start(self) -> None:
        """Fetch now (logging the outcome); never raises, a failure is retried lazily."""
        logger.info("JWKS %s: fetching signing keys", self.url)
        task = self._refresh()
        if task is not None:
            await task

    async def aclose(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight
        await self._session.aclose()

    def _refresh(self) -> asyncio.Task[None] | None:
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self.cooldown:
            return None
        self._last_attempt = now
        self._inflight = asyncio.get_running_loop().create_task(self._fetch(), name=f"JWKS fetch {self.url}")
        return self._inflight

    async def _fetch(self) -> None:
        try:
            keys = parse_jwks(await self._download(), self.allowed)
            if not keys:
                raise ValueError("no usable signing key in the set")
        except Exception as exc:  # whatever went wrong, the last good keys stay in use
            self.fetches_failed += 1
            kept = f"keeping the {len(self.keys)} keys of the last good fetch" if self.keys else "no keys yet"
            logger.warning(
                "JWKS %s: fetch failed (%s); %s; next try in %gs at the earliest",
                self.url,
                str(exc) or type(exc).__name__,
                kept,
                self.cooldown,
            )
            return
        self.keys = keys
        self._fetched_at = self._clock()
        self.fetches_ok += 1
        logger.info("JWKS %s: %d signing keys (%s)", self.url, len(keys), ", ".join(shown(str(k.kid)) for k in keys))

    async def _download(self) -> object:
        return await fetch_json(self._session(), self.url, MAX_JWKS_BYTES)
