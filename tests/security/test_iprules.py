"""The dynamic rule index (expiry, bounds, bans apart) and the in-memory rule store it follows."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from mcp_barbican.security.bans import ban_id
from mcp_barbican.security.iprules import DynamicRules, new_rule
from mcp_barbican.storage import IpRule, RuleTableFull
from mcp_barbican.storage.memory import MemoryRuleTable
from mcp_barbican.storage.records import Action


class Clock:
    """A settable clock, in Unix seconds."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


NOW = 1_000_000.0


def ban(cidr: str, expires_at: float) -> IpRule:
    """An automatic ban, as the tracker writes it."""
    return IpRule(ban_id(cidr), cidr, "deny", expires_at, "authentication failures", NOW - 1)


def rules(*entries: tuple[str, Action, float | None] | IpRule) -> DynamicRules:
    table = DynamicRules(clock=lambda: NOW)
    for index, entry in enumerate(entries):
        table.add(entry if isinstance(entry, IpRule) else IpRule(f"r{index}", *entry))
    return table


def test_dynamic_rules_expire_at_lookup_time_and_are_swept() -> None:
    clock = Clock(NOW)
    table = DynamicRules(clock=clock)
    table.add(IpRule("short", "1.1.1.1", "deny", NOW + 10))
    table.add(IpRule("long", "2.2.2.2", "deny", NOW + 100))
    table.add(IpRule("forever", "3.3.3.3", "deny", None))
    one, two = ipaddress.ip_address("1.1.1.1"), ipaddress.ip_address("2.2.2.2")
    assert table.match(one, "deny", NOW + 9.999) is not None
    assert table.match(one, "deny", NOW + 10) is None
    assert len(table) == 2
    assert [rule.id for rule in table.rules(NOW + 50)] == ["long", "forever"]
    assert table.match(two, "deny", NOW + 100) is None
    assert table.sweep(NOW + 10_000) == 0
    assert [rule.id for rule in table.rules(NOW + 10_000)] == ["forever"]


def test_an_expired_rule_is_not_added_and_replaces_its_id() -> None:
    table = DynamicRules(clock=lambda: NOW)
    table.add(IpRule("x", "1.1.1.1", "deny", None))
    table.add(IpRule("x", "1.1.1.1", "deny", NOW - 1))
    assert len(table) == 0


def test_replacing_a_rule_moves_it() -> None:
    table = DynamicRules(clock=lambda: NOW)
    table.add(IpRule("x", "1.1.1.1", "deny", None))
    table.add(IpRule("x", "2.2.2.2", "allow", NOW + 5))
    assert table.match(ipaddress.ip_address("1.1.1.1"), "deny", NOW) is None
    assert table.match(ipaddress.ip_address("2.2.2.2"), "allow", NOW) is not None
    assert table.has_allow(NOW)
    assert not table.has_allow(NOW + 5)


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(IpRule("a", "10.0.0.0/40", "deny"), id="bad-prefix"),
        pytest.param(IpRule("b", "nope", "deny"), id="not-an-address"),
        pytest.param(IpRule("c", "1.1.1.1", "maybe"), id="bad-action"),  # type: ignore[arg-type]
    ],
)
def test_malformed_rules_are_refused(rule: IpRule) -> None:
    table = DynamicRules()
    with pytest.raises(ValueError):
        table.add(rule)
    assert len(table) == 0


def test_the_table_is_bounded_and_evicts_the_rule_closest_to_expiry() -> None:
    clock = Clock(NOW)
    table = DynamicRules(max_rules=3, clock=clock)
    table.add(IpRule("permanent", "1.1.1.1", "deny", None))
    table.add(IpRule("soon", "2.2.2.2", "deny", NOW + 10))
    table.add(IpRule("later", "3.3.3.3", "deny", NOW + 20))
    table.add(IpRule("new", "4.4.4.4", "deny", NOW + 30))
    assert [rule.id for rule in table.rules(NOW)] == ["later", "new", "permanent"]
    clock.now = NOW + 25  # "later" has expired: room without evicting anything live
    table.add(IpRule("newer", "5.5.5.5", "deny", None))
    assert [rule.id for rule in table.rules(clock.now)] == ["new", "newer", "permanent"]


def test_a_table_full_of_permanent_rules_refuses_more() -> None:
    table = DynamicRules(max_rules=2, clock=lambda: NOW)
    table.add(IpRule("a", "1.1.1.1", "deny", None))
    table.add(IpRule("b", "2.2.2.2", "deny", None))
    with pytest.raises(RuleTableFull):
        table.add(IpRule("c", "3.3.3.3", "deny", NOW + 5))
    table.add(IpRule("b", "2.2.2.3", "deny", None))  # replacing by id needs no room
    assert len(table) == 2


def test_churn_on_one_rule_keeps_the_expiry_heap_small() -> None:
    table = DynamicRules(clock=lambda: NOW)
    for step in range(10_000):
        table.add(IpRule("ban:1.1.1.1", "1.1.1.1", "deny", NOW + 600 + step))
    assert len(table) == 1
    assert len(table._expiry.heap) < 200


def test_new_rule_validates_and_normalizes() -> None:
    rule = new_rule("10.1.2.3/8", "deny", now=NOW, duration=60, reason="abuse")
    assert (rule.cidr, rule.expires_at, rule.created_at, rule.reason) == ("10.0.0.0/8", NOW + 60, NOW, "abuse")
    assert len(rule.id) == 16
    assert new_rule("::1", "allow", now=NOW).expires_at is None
    with pytest.raises(ValueError):
        new_rule("10.0.0.256", "deny", now=NOW)
    with pytest.raises(ValueError, match="allow or deny"):
        new_rule("10.0.0.1", "block", now=NOW)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_malformed_rule_told_by_the_store_is_refused_by_the_index_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store keeps what it is given (validation is `new_rule`'s); the index refuses what it cannot match."""
    store = MemoryRuleTable(clock=lambda: NOW)
    index = DynamicRules(clock=lambda: NOW)
    await index.follow(store)
    heard: list[str] = []
    store.subscribe(lambda change: heard.append(change.id))
    with caplog.at_level(logging.ERROR):
        await store.put(IpRule("a", "nope", "deny"))
    assert len(index) == 0
    assert heard == ["a"], "the other followers still hear of the change"
    assert "a follower of the rules table failed on the change of 'a': ValueError" in caplog.text


@pytest.mark.anyio
async def test_the_index_follows_its_store() -> None:
    clock = Clock(NOW)
    store = MemoryRuleTable(clock=clock)
    await store.put(IpRule("old", "1.1.1.1", "deny", None))
    index = DynamicRules(clock=clock)
    index.add(IpRule("stale", "9.9.9.9", "deny", None))  # not in the store: dropped on load
    unsubscribe = await index.follow(store)
    assert [rule.id for rule in index.rules(NOW)] == ["old"]
    await store.put(IpRule("new", "2.2.2.2", "deny", NOW + 60))
    assert index.match(ipaddress.ip_address("2.2.2.2"), "deny", NOW) is not None  # at once
    await store.delete("old")
    assert index.match(ipaddress.ip_address("1.1.1.1"), "deny", NOW) is None
    unsubscribe()
    await store.put(IpRule("unseen", "3.3.3.3", "deny", None))
    assert [rule.id for rule in index.rules(NOW)] == ["new"]


class RacyStore(MemoryRuleTable):
    """A store whose list() sees a change land while it is being read."""

    async def list(self) -> list[IpRule]:
        rules = await super().list()
        await self.put(IpRule("during-load", "4.4.4.4", "deny", None))
        return rules


@pytest.mark.anyio
async def test_changes_during_the_initial_load_are_not_lost() -> None:
    index = DynamicRules(clock=lambda: NOW)
    await index.follow(RacyStore(clock=lambda: NOW))
    assert [rule.id for rule in index.rules(NOW)] == ["during-load"]


class BrokenStore(MemoryRuleTable):
    async def list(self) -> list[IpRule]:
        raise OSError("store down")


@pytest.mark.anyio
async def test_a_failed_load_unsubscribes() -> None:
    store = BrokenStore()
    with pytest.raises(OSError):
        await DynamicRules().follow(store)
    assert len(store._subscribers) == 0


def test_bans_are_listed_apart_from_operator_rules() -> None:
    table = rules(
        ("10.0.0.1", "deny", None), ban("10.0.0.2", NOW + 5), ("10.0.0.3", "allow", None), ban("::/64", NOW + 1)
    )
    assert [rule.id for rule in table.bans(NOW)] == ["ban:::_64", "ban:10.0.0.2"]
    assert [rule.id for rule in table.bans(NOW + 1)] == ["ban:10.0.0.2"]
