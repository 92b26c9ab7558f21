"""Rate limiting: token buckets per scope (global, client IP, principal, MCP), all or nothing.

A limit of R per minute with burst B is a bucket of B tokens (B defaults to R) refilling
continuously at R/60 per second; hour and day limits are further buckets holding their
whole quota. A request is admitted only if every applicable bucket holds a token, and then
takes one from each; a refused request takes none, so hammering an empty bucket does not
delay its recovery (as nginx's limit_req). The buckets and their store live in
`storage/buckets.py`; this module decides which buckets apply, asks the store, and answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import CLIENT_IP_KEY, BodyTooLarge, read_body, respond
from mcp_barbican.audit.events import AuditEvent, request_fields
from mcp_barbican.security.addresses import address_key
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.pipeline import Head, Policy
from mcp_barbican.security.principal import principal_id
from mcp_barbican.storage.buckets import (
    DEFAULT_MAX_KEYS,
    TOKEN_EPSILON,
    Bucket,
    BucketRef,
    BucketSpec,
    BucketStore,
    MemoryBucketStore,
    whole_tokens,
)
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config import RateLimitConfig

__all__ = [
    "RETOUCH",
    "RPC_RATE_LIMITED",
    "UNKNOWN_CLIENT",
    "Decision",
    "Limits",
    "RateLimit",
    "RateLimiter",
    "RequestKeys",
    "decide",
    "jsonrpc_request_id",
    "rate_limit_headers",
    "refusal",
]

#: The shared key of requests without a known client address: they share a bucket, never bypass it.
UNKNOWN_CLIENT: Final = "unknown"
#: In JSON-RPC's implementation-defined server-error range (-32000..-32099), mirroring HTTP 429.
RPC_RATE_LIMITED: Final = -32029
#: Seconds a client's resolved buckets are used before their LRU position is refreshed.
RETOUCH: Final = 1.0
#: Clients whose resolved buckets are kept (the whole cache is dropped when it is full).
_RESOLVED_MAX: Final = 4096
#: A refused body is read only to echo its JSON-RPC id; past this size the id is left null.
_PEEK_LIMIT: Final = 256 * 1024
_IPV6_BITS: Final = 128  # an ipv6_prefix of 128 keys every IPv6 address on its own

Header = tuple[bytes, bytes]


def _whole_seconds(seconds: float) -> int:
    """Seconds rounded up, never down: a client told to wait must find a token when it returns."""
    return max(0, math.ceil(seconds - TOKEN_EPSILON))


def _per_minute(name: str, rate: int | None, burst: int | None) -> tuple[BucketSpec, ...]:
    if rate is None:
        return ()
    return (BucketSpec(name, capacity=burst or rate, per_second=rate / 60, quota=rate, window=60),)


def _per_window(name: str, quota: int | None, window: int) -> tuple[BucketSpec, ...]:
    if quota is None:
        return ()
    return (BucketSpec(name, capacity=quota, per_second=quota / window, quota=quota, window=window),)


@dataclass(frozen=True)
class Limits:
    """The bucket shapes of each scope; an empty scope limits nothing."""

    global_: tuple[BucketSpec, ...] = ()
    per_ip: tuple[BucketSpec, ...] = ()
    per_principal: tuple[BucketSpec, ...] = ()
    per_mcp: tuple[BucketSpec, ...] = ()

    @classmethod
    def from_config(cls, config: RateLimitConfig) -> Limits:
        return cls(
            global_=(
                *_per_minute("global-minute", config.requests_per_minute, config.burst_size),
                *_per_window("global-hour", config.requests_per_hour, 3600),
                *_per_window("global-day", config.requests_per_day, 86400),
            ),
            per_ip=_per_minute("ip-minute", config.per_ip_requests_per_minute, config.per_ip_burst_size),
            per_principal=_per_minute(
                "token-minute", config.per_token_requests_per_minute, config.per_token_burst_size
            ),
            per_mcp=_per_minute("mcp-minute", config.per_mcp_requests_per_minute, config.per_mcp_burst_size),
        )

    @property
    def empty(self) -> bool:
        return not (self.global_ or self.per_ip or self.per_principal or self.per_mcp)


class RequestKeys(NamedTuple):
    """Whom a request is counted against: no principal → no per-token buckets; no MCP → no per-MCP ones."""

    ip: str | None
    principal: str | None
    mcp: str | None


@dataclass(frozen=True)
class Decision:
    """The verdict on one request, and what the RateLimit headers report.

    `limit_name`, `remaining` and `reset` describe one bucket: the one that refused with the
    longest wait, or when admitted the one with the fewest tokens left. `reset` is the
    seconds until that bucket gains its next token; `retry_after` is 0 when admitted.
    """

    allowed: bool
    retry_after: float
    limit_name: str
    remaining: int
    reset: float
    policies: list[str]


def decide(refs: Sequence[BucketRef], levels: Sequence[float], *, taken: bool) -> Decision:
    """The Decision for a store's answer (`levels` in `refs` order)."""
    policies = [ref.spec.policy for ref in refs]
    if not refs:
        return Decision(True, 0.0, "", 0, 0.0, policies)
    if taken:
        tightest = min(range(len(levels)), key=levels.__getitem__)
        spec, level = refs[tightest].spec, levels[tightest]
        return Decision(True, 0.0, spec.name, whole_tokens(level), spec.seconds_to_next_token(level), policies)
    waits = [ref.spec.seconds_to_next_token(level) for ref, level in zip(refs, levels, strict=True)]
    binding = max(range(len(waits)), key=waits.__getitem__)
    return Decision(False, waits[binding], refs[binding].spec.name, 0, waits[binding], policies)


class RateLimiter:
    """Every scope's buckets for one `rate_limit` block, in one store.

    Per-IP buckets key on the address as resolved upstream, except that an IPv6 address
    counts as its network of `ipv6_prefix` bits (as bans do): one host usually holds a /64.
    The masking happens only when a client's buckets are first resolved, never per request.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        store: BucketStore | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        ipv6_prefix: int = _IPV6_BITS,
    ) -> None:
        if not 0 < ipv6_prefix <= _IPV6_BITS:
            raise ValueError(f"ipv6_prefix must be 1-128, not {ipv6_prefix}")
        self.limits = limits
        self.ipv6_prefix = ipv6_prefix
        self.store: BucketStore = store if store is not None else MemoryBucketStore(max_keys=max_keys)
        self._local = self.store.local
        self._global_refs = tuple(BucketRef(spec, "") for spec in limits.global_)
        #: Per request keys: the store's eviction count, when to refresh their LRU position, their buckets.
        self._resolved: dict[tuple[str | None, str | None, str | None], tuple[int, float, list[Bucket]]] = {}

    @classmethod
    def from_config(
        cls,
        config: RateLimitConfig,
        *,
        store: BucketStore | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        ipv6_prefix: int = _IPV6_BITS,
    ) -> RateLimiter:
        return cls(Limits.from_config(config), store=store, max_keys=max_keys, ipv6_prefix=ipv6_prefix)

    @property
    def enabled(self) -> bool:
        return not self.limits.empty

    def refs(self, keys: RequestKeys) -> list[BucketRef]:
        """The buckets that apply to a request."""
        refs = [*self._global_refs]
        if self.limits.per_ip:
            ip = self.ip_key(keys.ip)
            refs += [BucketRef(spec, ip) for spec in self.limits.per_ip]
        if keys.principal is not None:
            refs += [BucketRef(spec, keys.principal) for spec in self.limits.per_principal]
        if keys.mcp is not None:
            refs += [BucketRef(spec, keys.mcp) for spec in self.limits.per_mcp]
        return refs

    def ip_key(self, ip: str | None) -> str:
        """The per-IP bucket key of a client address: IPv6 masked to `ipv6_prefix` bits, the rest as given."""
        if ip is None:
            return UNKNOWN_CLIENT
        if ":" in ip and self.ipv6_prefix < _IPV6_BITS:
            network = address_key(ip, self.ipv6_prefix)
            if network is not None and "/" in network:  # IPv4-mapped text stays as resolved upstream
                return network
        return ip

    def admits(self, ip: str | None, principal: str | None, mcp: str | None, now: float) -> bool:
        """Take a token from every applicable bucket if each holds one (True); else take none. The hot path.

        False means "decide in full through `check`": a refusal, or a store that is not in this
        process (its takes are awaited). With the in-process store, a client's buckets are looked
        up once and reused while the store forgets no bucket; their LRU position is refreshed at
        most every RETOUCH seconds (so LRU order is approximate to that, the usual trade of a
        cached lookup).
        """
        local = self._local
        if local is None:  # a shared store: its leases, if they hold a token of every bucket
            refs = self.refs(RequestKeys(ip, principal, mcp))
            return bool(refs) and self.store.take_held(refs)
        key = (ip, principal, mcp)
        entry = self._resolved.get(key)
        if entry is None or now >= entry[1] or entry[0] != local.evictions:
            buckets = local.resolve(self.refs(RequestKeys(ip, principal, mcp)), now)
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()
            entry = self._resolved[key] = (local.evictions, now + RETOUCH, buckets)
        return local.take_buckets(entry[2], now)

    async def check(self, keys: RequestKeys, now: float) -> Decision:
        """Admit the request (taking a token from every applicable bucket) or refuse it (taking none)."""
        refs = self.refs(keys)
        if not refs:
            return decide(refs, [], taken=True)
        taken, levels = await self.store.take(refs, now)
        return decide(refs, levels, taken=taken)


def rate_limit_headers(decision: Decision) -> list[Header]:
    """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-11, sections 3 and 4)."""
    if not decision.limit_name:
        return []
    # t: the effective window, seconds within which no more than r requests will be admitted (4.1.2).
    current = f'"{decision.limit_name}";r={decision.remaining};t={_whole_seconds(decision.reset)}'
    return [(b"ratelimit-policy", ", ".join(decision.policies).encode()), (b"ratelimit", current.encode())]


def jsonrpc_request_id(body: bytes) -> tuple[bool, jsonrpc.RequestId | None]:
    """Whether `body` is JSON-RPC, and the id to echo (None for notifications, batches, odd ids)."""
    try:
        message: Any = jsonrpc.loads(body)
    except ValueError:
        return False, None
    if isinstance(message, dict) and message.get("jsonrpc") == "2.0":
        request_id = message.get("id")
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            return True, request_id
        return True, None
    if isinstance(message, list) and any(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in message):
        return True, None
    return False, None


def refusal(decision: Decision, body: bytes | None) -> tuple[list[Header], bytes]:
    """The 429's headers and body: a JSON-RPC error when `body` was JSON-RPC, else a JSON error."""
    wait = max(1, _whole_seconds(decision.retry_after))
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", str(wait).encode()),
        *rate_limit_headers(decision),
    ]
    is_rpc, request_id = jsonrpc_request_id(body) if body else (False, None)
    if is_rpc:
        data = {"retryAfterSeconds": wait, "limit": decision.limit_name}
        return headers, jsonrpc.error_body(request_id, RPC_RATE_LIMITED, "rate limit exceeded", data)
    message = f"too many requests: the {decision.limit_name} limit is exhausted; retry in {wait} s"
    return headers, orjson.dumps({"error": "rate_limited", "message": message, "retry_after": wait})


async def _refused_body(scope: Scope, receive: Receive) -> bytes | None:
    if scope.get("method") != "POST":
        return None
    try:
        return await read_body(scope, receive, _PEEK_LIMIT)
    except BodyTooLarge:
        return None


class RateLimit(Policy):
    """Admits or refuses each request by the limiter; refusals carry the RateLimit headers.

    It counts only what reaches it: place it after CORS preflights, IP rules and
    authentication, so refused-earlier requests and preflights never spend a token. An
    admitted request's body is never read here; a refused POST's is, to echo its JSON-RPC id.
    """

    slot = "rate_limit"
    fast_takes = True

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        mcp_id: str | None,
        counters: SecurityCounters,
        clock: Callable[[], float] = time.monotonic,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        #: None when nothing is recorded: the builder passes a trail only if it has a sink.
        self.audit = audit
        self.limiter = limiter
        self.mcp_id = mcp_id
        self.counters = counters
        self.clock = clock

    def fast(self, scope: Scope, head: Head) -> bool:
        """Takes a token from each bucket when all have one; else takes none (the layer then refuses)."""
        principal = head.principal
        return self.limiter.admits(head.ip, principal.id if principal is not None else None, self.mcp_id, self.clock())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled:
            await self.app(scope, receive, send)
            return
        keys = RequestKeys(ip=scope.get(CLIENT_IP_KEY), principal=principal_id(scope), mcp=self.mcp_id)
        now = self.clock()
        # Admitted answers carry no RateLimit headers: wrapping every response for them
        # cost more than the whole limiter; refusals carry them all.
        if self.limiter.admits(keys.ip, keys.principal, keys.mcp, now):
            await self.app(scope, receive, send)
            return
        # Refused by the local buckets a moment ago (this takes nothing now), or a shared store decides.
        decision = await self.limiter.check(keys, now)
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        self.counters.rate_limit_exceeded += 1
        self.counters.violation()
        if self.audit is not None:
            details = {"limit": decision.limit_name, "retry_after": decision.retry_after}
            fields = request_fields(scope)
            event = AuditEvent(
                "rate_limit",
                "request",
                False,
                f"mcp:{self.mcp_id}",
                keys.principal,
                mcp=self.mcp_id,
                details=details,
                **fields,
            )
            await self.audit.emit(event)
        headers, body = refusal(decision, await _refused_body(scope, receive))
        await respond(send, 429, body, headers)
