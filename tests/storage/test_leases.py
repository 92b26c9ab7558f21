"""Leases: tokens a replica holds ahead of need, spent all or nothing, bounded, expiring."""

from __future__ import annotations

import time

import pytest

from mcp_barbican.storage import leases as leases_module
from mcp_barbican.storage.buckets import BucketRef, BucketSpec
from mcp_barbican.storage.leases import MAX_LEASE, Leases, lease_size


def ref(capacity: int, key: str = "k") -> BucketRef:
    return BucketRef(BucketSpec("ip", capacity=capacity, per_second=capacity / 60, quota=capacity, window=60), key)


@pytest.mark.parametrize(
    ("capacity", "size"),
    [(1, 1), (10, 1), (199, 1), (200, 2), (1_000, 10), (100_000, MAX_LEASE), (100_000_000, MAX_LEASE)],
)
def test_a_small_bucket_is_leased_one_token_at_a_time(capacity: int, size: int) -> None:
    assert lease_size(ref(capacity)) == size


def test_spending_takes_a_token_from_every_key_or_from_none() -> None:
    held = Leases(max_keys=10)
    assert held.spend(["a"]) is None  # nothing held
    assert held.granted(["a", "b"], [3, 1], [5.0, 7.0]) == [7.0, 7.0]  # one of each spent at once
    assert held.spend(["a", "b"]) is None, "b holds nothing now: a keeps its tokens"
    assert held.spend(["a"]) == [6.0]
    assert held.spend(["a"]) == [5.0]
    assert held.spend(["a"]) is None


def test_what_is_asked_for_is_a_lease_where_nothing_is_held() -> None:
    held = Leases(max_keys=10)
    refs = [ref(1_000, "a"), ref(10, "b")]
    assert held.wanted(refs, ["a", "b"]) == [10, 1]
    held.granted(["a", "b"], [10, 1], [0.0, 0.0])
    assert held.wanted(refs, ["a", "b"]) == [0, 1], "a holds 9: nothing more is asked for it"


def test_a_lease_expires_unspent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    held = Leases(max_keys=10)
    held.granted(["a"], [5], [0.0])
    assert held.spend(["a"]) is not None
    clock[0] += leases_module.LEASE_SECONDS
    assert held.spend(["a"]) is None, "expired: its tokens are not spent later"


def test_a_held_token_keeps_its_expiry_when_another_bucket_is_granted(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    held = Leases(max_keys=10)
    held.granted(["a"], [5], [0.0])
    clock[0] += 0.9
    held.granted(["a", "b"], [0, 5], [0.0, 0.0])  # a had tokens: Redis gave it none
    clock[0] += 0.2
    assert held.spend(["a"]) is None, "a's lease is as old as it was"


def test_the_table_is_bounded() -> None:
    held = Leases(max_keys=3)
    for n in range(10):
        held.granted([f"k{n}"], [2], [0.0])
    assert len(held) == 3
    assert held.spend(["k9"]) is not None and held.spend(["k0"]) is None


def test_while_a_lease_is_asked_for_a_concurrent_request_asks_for_one_token() -> None:
    held = Leases(max_keys=10)
    refs, keys = [ref(1_000, "a")], ["a"]
    first = held.wanted(refs, keys)
    assert first == [10]
    assert held.wanted(refs, keys) == [1], "a second lease would let this replica hold two"
    held.asked(keys, first)
    assert held.wanted(refs, keys) == [10]


def test_a_held_token_that_expired_while_redis_answered_is_not_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    held = Leases(max_keys=10)
    held.granted(["a"], [5], [0.0])  # a holds 4
    refs, keys = [ref(1_000, "a"), ref(1_000, "b")], ["a", "b"]
    wanted = held.wanted(refs, keys)
    assert wanted == [0, 10]
    clock[0] += 2 * leases_module.LEASE_SECONDS  # a's lease expires while Redis answers for b
    assert held.granted(keys, [0, 10], [0.0, 0.0]) is None, "a has no token to spend: ask again"
    assert held.wanted(refs, keys) == [10, 0], "b's grant is kept; a is asked for"
