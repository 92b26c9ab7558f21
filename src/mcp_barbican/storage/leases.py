"""Tokens a replica took from the shared rate-limit buckets ahead of need (leases).

A request that finds a token of its own for every bucket it needs spends them here and asks Redis
nothing; otherwise it asks Redis for what it lacks, and for a bucket of capacity C it asks for up to
C/100 tokens at once (at most MAX_LEASE), taken all or nothing with the other buckets by the one
script. A bucket of fewer than 200 tokens is therefore leased one token at a time: every request is
decided by Redis and a limit is exact across replicas. A larger one is exact to within the tokens
the replicas hold: at most 1 % of the capacity each, given back to nobody when they expire after
LEASE_SECONDS unused (they were taken from the bucket, so a lease never admits more than the limit).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Final

from mcp_barbican.storage.buckets import BucketRef

__all__ = ["LEASE_SECONDS", "MAX_LEASE", "Leases", "lease_size"]

#: Share of a bucket's capacity one replica may hold unspent.
LEASE_SHARE: Final = 0.01
MAX_LEASE: Final = 1000
#: An unspent lease is dropped after this long (its tokens are not given back).
LEASE_SECONDS: Final = 1.0


def lease_size(ref: BucketRef) -> int:
    """How many tokens to ask for when a bucket's lease runs out (1 for a small bucket: exact)."""
    return max(1, min(MAX_LEASE, int(ref.spec.capacity * LEASE_SHARE)))


class Leases:
    """Per bucket key: tokens held and until when (monotonic), least recently used first; at most `max_keys`."""

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._held: collections.OrderedDict[str, tuple[int, float, float]] = collections.OrderedDict()
        #: Keys a lease is being asked for now: a concurrent request asks for one token only, so a replica
        #: never holds more than one lease's worth of a bucket.
        self._asking: set[str] = set()

    def __len__(self) -> int:
        return len(self._held)

    def _tokens(self, key: str, now: float) -> int:
        entry = self._held.get(key)
        if entry is None or entry[1] <= now:
            return 0
        return max(entry[0], 0)

    def spend(self, keys: Sequence[str]) -> list[float] | None:
        """One token from each key's lease, if every key holds one (else nothing spent): the levels left."""
        now = time.monotonic()
        if not all(self._tokens(key, now) for key in keys):
            return None
        levels = []
        for key in keys:
            tokens, until, level = self._held[key]
            self._held[key] = (tokens - 1, until, level)
            self._held.move_to_end(key)
            levels.append(level + tokens - 1)
        return levels

    def wanted(self, refs: Sequence[BucketRef], keys: Sequence[str]) -> list[int]:
        """What to ask Redis for, per bucket: nothing where a token is held, else a lease (one token while
        another request asks for that bucket's lease). Call `asked` with the same answer when Redis replied."""
        now = time.monotonic()
        out = []
        for ref, key in zip(refs, keys, strict=True):
            if self._tokens(key, now):
                out.append(0)
            elif key in self._asking:
                out.append(1)
            else:
                size = lease_size(ref)
                if size > 1:
                    self._asking.add(key)
                out.append(size)
        return out

    def asked(self, keys: Sequence[str], wanted: Sequence[int]) -> None:
        """The leases `wanted` asked for are answered (granted or not)."""
        for key, want in zip(keys, wanted, strict=True):
            if want > 1:
                self._asking.discard(key)

    def granted(self, keys: Sequence[str], grants: Sequence[int], levels: Sequence[float]) -> list[float] | None:
        """Add what Redis granted, then spend one token of each key: the levels left (Redis's plus what is held).
        None, spending nothing, when a key Redis was not asked for lost its held token meanwhile (it expired or
        was evicted while Redis answered): the caller asks again."""
        now = time.monotonic()
        for key, grant, level in zip(keys, grants, levels, strict=True):
            if grant:
                self._held[key] = (self._tokens(key, now) + grant, now + LEASE_SECONDS, level)
        spent = self.spend(keys)
        while len(self._held) > self._max_keys:
            self._held.popitem(last=False)
        return spent
