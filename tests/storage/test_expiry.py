"""The expiry queue of the in-process tables: order, replacement, removal, and a bounded heap."""

from __future__ import annotations

from mcp_barbican.storage.expiry import ExpiryQueue


def test_keys_come_out_soonest_first_and_only_when_due() -> None:
    queue = ExpiryQueue()
    for key, at in (("c", 30.0), ("a", 10.0), ("b", 20.0)):
        queue.push(key, at)
    assert queue.pop_due(9.9) == []
    assert queue.pop_due(20.0) == ["a", "b"]
    assert len(queue) == 1
    assert queue.pop_soonest() == "c"
    assert queue.pop_soonest() is None


def test_a_pushed_again_key_keeps_only_its_last_expiry() -> None:
    queue = ExpiryQueue()
    queue.push("a", 10.0)
    queue.push("a", 50.0)
    queue.push("b", 20.0)
    assert queue.pop_due(30.0) == ["b"]
    assert queue.pop_soonest() == "a"


def test_a_discarded_key_never_comes_out() -> None:
    queue = ExpiryQueue()
    queue.push("a", 10.0)
    queue.push("b", 20.0)
    queue.discard("a")
    queue.discard("missing")
    assert queue.pop_due(100.0) == ["b"]


def test_stale_entries_are_compacted_away() -> None:
    queue = ExpiryQueue()
    for step in range(10_000):
        queue.push("churn", float(step))
        queue.discard("churn")
    assert len(queue) == 0
    assert len(queue.heap) < 200
