"""Rate-limit buckets: their shape, their arithmetic, and where their state lives.

`BucketStore.take` is the one operation, all or nothing: if every bucket of a request holds
a token, take one from each; else take none. `MemoryBucketStore` keeps buckets in this
process, one LRU table per bucket name capped at `max_keys` (a forgotten key starts full
again, the trade-off nginx and Traefik make). It is also the store's `local` fast path: the
rate limiter takes from it synchronously on the request path. The memory and SQLite state
stores both keep buckets here: a local limiter's state need not survive a restart (as
nginx's and Envoy's local limits); a shared store (Redis) keeps them server-side instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

__all__ = [
    "DEFAULT_MAX_KEYS",
    "TOKEN_EPSILON",
    "Bucket",
    "BucketRef",
    "BucketSpec",
    "BucketStore",
    "LocalBuckets",
    "MemoryBucketStore",
    "whole_tokens",
]

#: Keys per table before the least recently seen is forgotten: a full table is ~25 MB (IPv6 keys).
DEFAULT_MAX_KEYS: Final = 100_000
#: Refill sums of floats may land a hair below a whole token; this much short still counts as one.
TOKEN_EPSILON: Final = 1e-9


def whole_tokens(level: float) -> int:
    return int(level + TOKEN_EPSILON)


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One token bucket's shape; `name` names its policy in the RateLimit headers."""

    name: str
    capacity: int
    per_second: float
    quota: int
    window: int
    policy: str = field(init=False)
    #: Seconds per token.
    interval: float = field(init=False)
    #: How far `Bucket.due` lies behind "now" when the bucket is full: (capacity - 1) tokens'
    #: worth, plus the hair by which a refill summed from floats may fall short of a whole token.
    lead: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", 1.0 / self.per_second)
        object.__setattr__(self, "lead", (self.capacity - 1 + TOKEN_EPSILON) * self.interval)
        # draft-ietf-httpapi-ratelimit-headers-11 section 3: a String item with q (quota) and w (window);
        # the burst, when it differs from the quota, as a vendor-prefixed parameter (section 3.1).
        text = f'"{self.name}";q={self.quota};w={self.window}'
        if self.capacity != self.quota:
            text += f";barbican-burst={self.capacity}"
        object.__setattr__(self, "policy", text)

    def seconds_to_next_token(self, level: float) -> float:
        """How long until `level` gains its next whole token (0 when the bucket is full)."""
        if level + TOKEN_EPSILON >= self.capacity:
            return 0.0
        return max(0.0, (whole_tokens(level) + 1 - level) / self.per_second)


class Bucket:
    """A token bucket kept as one moment, `due`: from then on it holds a whole token.

    A bucket of capacity B refilling at r per second holds L(now) = min(B, 1 + (now - due)·r)
    tokens, so "holds a token" is `due <= now`, and taking one moves `due` on by 1/r from
    the later of `due` and the moment the bucket was last full (now - (B-1)/r). This is the
    token bucket of DESIGN.md section 4, arithmetic and all, in the form ATM's GCRA and
    redis-cell keep it: one comparison to check and one addition to take. Time before `due`
    reads as an emptier bucket, never a fuller one, so a clock that steps back refills nothing.
    """

    __slots__ = ("due", "spec")

    def __init__(self, spec: BucketSpec, now: float) -> None:
        self.spec = spec
        self.due = now - spec.lead  # full

    def level(self, now: float) -> float:
        spec = self.spec
        level = 1.0 + (now - self.due) * spec.per_second - TOKEN_EPSILON
        return min(float(spec.capacity), max(0.0, level))

    def has_token(self, now: float) -> bool:
        return self.due <= now

    def take(self, now: float) -> None:
        """Take one token, which the caller has checked is there."""
        full_at = now - self.spec.lead
        self.due = max(self.due, full_at) + self.spec.interval

    def try_take(self, now: float) -> bool:
        if not self.has_token(now):
            return False
        self.take(now)
        return True

    def seconds_until_token(self, now: float) -> float:
        return max(0.0, self.due - now)


class BucketRef(NamedTuple):
    """One bucket of one key; `spec.name` is the table it lives in."""

    spec: BucketSpec
    key: str


class BucketStore(Protocol):
    """Where bucket state lives; `take` is the one operation and it must be atomic.

    `local` is the in-process table when the buckets live in this process, for the rate
    limiter's synchronous fast path; None for a shared store, whose every take is awaited.

    A Redis store does `take` in one Lua script: KEYS are the buckets (each one number, its
    `Bucket.due`, all under one hash tag so a cluster keeps them in one slot), ARGV carries
    each bucket's lead and interval. The script reads "now" from Redis TIME (replicas'
    clocks skew), returns the levels unchanged if any `due` lies after now, and otherwise
    moves each `due` on as `Bucket.take` does, with a PEXPIRE at the moment the bucket is
    full again (an absent key reads as a full bucket, so expiry loses nothing).
    """

    @property
    def local(self) -> MemoryBucketStore | None: ...

    def take_held(self, refs: Sequence[BucketRef]) -> bool:
        """A token from every bucket out of what this process holds already, without I/O (a shared store's
        leases); False, taking nothing, when it cannot (then `take` decides)."""
        ...

    async def take(self, refs: Sequence[BucketRef], now: float) -> tuple[bool, list[float]]:
        """If every bucket holds a token, take one from each. Returns whether it did, and the levels after."""
        ...


class MemoryBucketStore:
    """Bucket state in this process: one LRU table per bucket name, each capped at `max_keys`."""

    def take_held(self, refs: Sequence[BucketRef]) -> bool:
        return False  # `local` is the fast path of a store in this process

    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.tables: dict[str, OrderedDict[str, Bucket]] = {}
        #: How many buckets were forgotten so far: resolved buckets are stale once it moves.
        self.evictions = 0

    @property
    def local(self) -> MemoryBucketStore | None:
        return self

    async def take(self, refs: Sequence[BucketRef], now: float) -> tuple[bool, list[float]]:
        return self.take_all(refs, now)

    def take_all(self, refs: Sequence[BucketRef], now: float) -> tuple[bool, list[float]]:
        """`take`, synchronously."""
        buckets = self.resolve(refs, now)
        taken = self.take_buckets(buckets, now)
        return taken, [bucket.level(now) for bucket in buckets]

    def resolve(self, refs: Sequence[BucketRef], now: float) -> list[Bucket]:
        """The buckets of `refs`, created full where missing; marks them recently used."""
        return [self._bucket(ref, now) for ref in refs]

    @staticmethod
    def take_buckets(buckets: Sequence[Bucket], now: float) -> bool:
        """`take_all` on buckets resolved before (they stay valid until `evictions` changes)."""
        # The hot path of every limited request: Bucket.has_token and Bucket.take, inlined.
        for bucket in buckets:
            if bucket.due > now:
                return False
        for bucket in buckets:
            spec = bucket.spec
            full_at = now - spec.lead
            due = bucket.due
            bucket.due = (due if due > full_at else full_at) + spec.interval
        return True

    def _bucket(self, ref: BucketRef, now: float) -> Bucket:
        table = self.tables.get(ref.spec.name)
        if table is None:
            table = self.tables[ref.spec.name] = OrderedDict()
        bucket = table.get(ref.key)
        if bucket is not None:
            if len(table) > 1:  # the global and per-MCP tables hold one key: no order to keep
                table.move_to_end(ref.key)
            return bucket
        bucket = table[ref.key] = Bucket(ref.spec, now)
        if len(table) > self.max_keys:
            table.popitem(last=False)
            self.evictions += 1
        return bucket


class LocalBuckets:
    """The in-process bucket stores of a state store, one per namespace (one per rate limiter)."""

    def __init__(self) -> None:
        self._stores: dict[str, MemoryBucketStore] = {}

    def get(self, namespace: str, *, max_keys: int = DEFAULT_MAX_KEYS) -> MemoryBucketStore:
        """The store of `namespace`, made on first use with `max_keys`."""
        store = self._stores.get(namespace)
        if store is None:
            store = self._stores[namespace] = MemoryBucketStore(max_keys=max_keys)
        return store
