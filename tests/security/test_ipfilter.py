"""IP allow/deny decisions, the dynamic rule index and its store, and the IP filter layer."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_barbican.security.bans import ban_id
from mcp_barbican.security.client_ip import ClientAddress, TrustedProxies
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import (
    Action,
    DynamicRules,
    IPFilter,
    IpRule,
    IpSet,
    IpVerdict,
    MemoryIpRuleStore,
    RuleChange,
    RuleTableFull,
    address_key,
    decide,
    parse_ip,
)
from mcp_barbican.security.principal import CLIENT_IP_KEY
from mcp_barbican.types import Message, Scope
from tests.security.asgi import call, make_scope, ok_app


class Clock:
    """A settable clock, in Unix seconds."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


EMPTY = IpSet.build([])


@pytest.mark.parametrize(
    ("entries", "ip", "member"),
    [
        pytest.param(["192.168.1.5"], "192.168.1.5", True, id="v4-single"),
        pytest.param(["192.168.1.5"], "192.168.1.6", False, id="v4-single-neighbour"),
        pytest.param(["10.0.0.0/8"], "10.0.0.0", True, id="v4-cidr-first"),
        pytest.param(["10.0.0.0/8"], "10.255.255.255", True, id="v4-cidr-last"),
        pytest.param(["10.0.0.0/8"], "9.255.255.255", False, id="v4-cidr-below"),
        pytest.param(["10.0.0.0/8"], "11.0.0.0", False, id="v4-cidr-above"),
        pytest.param(["172.16.0.0/12"], "172.31.255.255", True, id="v4-odd-prefix-last"),
        pytest.param(["172.16.0.0/12"], "172.32.0.0", False, id="v4-odd-prefix-above"),
        pytest.param(["10.1.2.3/8"], "10.200.0.1", True, id="v4-host-bits-set"),
        pytest.param(["0.0.0.0/0"], "255.255.255.255", True, id="v4-slash-0"),
        pytest.param(["0.0.0.0/0"], "::1", False, id="v4-slash-0-not-v6"),
        pytest.param(["203.0.113.7/32"], "203.0.113.7", True, id="v4-slash-32"),
        pytest.param(["203.0.113.7/32"], "203.0.113.8", False, id="v4-slash-32-neighbour"),
        pytest.param(["2001:db8::/32"], "2001:db8::", True, id="v6-cidr-first"),
        pytest.param(["2001:db8::/32"], "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True, id="v6-cidr-last"),
        pytest.param(["2001:db8::/32"], "2001:db9::", False, id="v6-cidr-above"),
        pytest.param(["2001:db8::/32"], "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False, id="v6-cidr-below"),
        pytest.param(["2001:db8::1/128"], "2001:0db8:0000::0001", True, id="v6-slash-128-other-spelling"),
        pytest.param(["2001:db8::1/128"], "2001:db8::2", False, id="v6-slash-128-neighbour"),
        pytest.param(["::1"], "::1", True, id="v6-loopback"),
        pytest.param(["::/0"], "2001:db8::1", True, id="v6-slash-0"),
        pytest.param(["::/0"], "1.2.3.4", True, id="v6-slash-0-covers-mapped-v4"),
        pytest.param(["2001:db8::/32"], "1.2.3.4", False, id="v6-rule-not-v4"),
        pytest.param(["10.0.0.0/8"], "::ffff:10.1.2.3", True, id="mapped-client-v4-rule"),
        pytest.param(["10.0.0.0/8"], "::ffff:11.1.2.3", False, id="mapped-client-outside"),
        pytest.param(["::ffff:10.0.0.0/104"], "10.9.9.9", True, id="mapped-rule-v4-client"),
        pytest.param(["::ffff:10.0.0.0/104"], "11.0.0.0", False, id="mapped-rule-outside"),
        pytest.param(["::ffff:1.2.3.4"], "1.2.3.4", True, id="mapped-single-rule"),
        pytest.param(["::ffff:0:0/96"], "8.8.8.8", True, id="all-mapped-is-all-v4"),
        pytest.param(["fe80::/10"], "fe80::1%eth0", True, id="zone-id-client"),
        pytest.param(["10.0.0.0/8"], "10.0.0.1:80", False, id="port-is-not-an-address"),
        pytest.param(["10.0.0.0/8"], "unknown", False, id="garbage"),
        pytest.param(["10.0.0.0/8", "192.168.0.0/16", "10.0.0.5"], "192.168.3.3", True, id="several"),
        pytest.param([], "1.2.3.4", False, id="empty"),
    ],
)
def test_ipset_membership(entries: list[str], ip: str, member: bool) -> None:
    assert (ip in IpSet.build(entries)) is member


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "not-an-ip", "", "10.0.0.1-10.0.0.9", "١.٢.٣.٤"])
def test_ipset_refuses_invalid_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        IpSet.build([entry])


def test_ipset_groups_by_prefix_length_so_lookups_do_not_scan() -> None:
    singles = IpSet.build(f"10.{i // 256}.{i % 256}.1" for i in range(1000))
    assert len(singles) == 1000
    assert len(singles.v4) == 1  # one hash set for all thousand /32 entries


def test_a_thousand_entry_list_decides_in_microseconds() -> None:
    entries = [f"{a}.{b}.0.0/{16 + b % 9}" for a in range(11, 51) for b in range(25)]
    whitelist = IpSet.build(entries)
    blacklist = IpSet.build(f"2001:db8:{i:x}::/48" for i in range(1000))
    dynamic = DynamicRules()
    rounds = 5000
    start = time.perf_counter()
    for _ in range(rounds):
        decide("203.0.113.9", whitelist=whitelist, blacklist=blacklist, dynamic=dynamic, now=0.0)
    per_decision = (time.perf_counter() - start) / rounds
    # A linear scan of 1000 networks costs ~200 µs; the prefix-indexed sets cost a few.
    assert per_decision < 50e-6


@st.composite
def network_texts(draw: st.DrawFn) -> str:
    address = draw(st.ip_addresses())
    prefix = draw(st.integers(0, address.max_prefixlen))
    return str(ipaddress.ip_network((address, prefix), strict=False))


@given(networks=st.lists(network_texts(), max_size=8), probe=st.ip_addresses())
def test_ipset_agrees_with_a_linear_scan(networks: list[str], probe: Any) -> None:
    def unmapped(address: Any) -> Any:
        return address.ipv4_mapped if address.version == 6 and address.ipv4_mapped is not None else address

    def covers(network: Any, address: Any) -> bool:
        if address.version == network.version and address in network:
            return True
        mapped = ipaddress.IPv6Address(f"::ffff:{address}") if address.version == 4 else None
        return mapped is not None and network.version == 6 and mapped in network

    target = unmapped(probe)
    expected = any(covers(ipaddress.ip_network(n), target) for n in networks)
    assert (probe in IpSet.build(networks)) is expected


@given(text=st.text(max_size=80))
def test_parse_ip_never_raises(text: str) -> None:
    address = parse_ip(text)
    assert address is None or not (address.version == 6 and address.ipv4_mapped is not None)


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        pytest.param("198.51.100.7", 64, "198.51.100.7", id="v4-per-address"),
        pytest.param("198.51.100.7", 1, "198.51.100.7", id="v4-ignores-the-prefix"),
        pytest.param("::ffff:198.51.100.7", 64, "198.51.100.7", id="mapped-is-v4"),
        pytest.param("::FFFF:c633:6407", 48, "198.51.100.7", id="mapped-hex-spelling"),
        pytest.param("2001:db8:0:1::5", 64, "2001:db8:0:1::/64", id="v6-slash-64"),
        pytest.param("2001:0db8:0000:0001:ffff:ffff:ffff:ffff", 64, "2001:db8:0:1::/64", id="v6-last-of-its-64"),
        pytest.param("2001:db8:0:2::5", 64, "2001:db8:0:2::/64", id="v6-next-64"),
        pytest.param("2001:db8:abcd:12ff::1", 56, "2001:db8:abcd:1200::/56", id="v6-slash-56"),
        pytest.param("2001:db8:abcd:12ff::1", 1, "::/1", id="v6-slash-1"),
        pytest.param("2001:db8::5", 127, "2001:db8::4/127", id="v6-slash-127"),
        pytest.param("2001:db8::5", 128, "2001:db8::5", id="v6-slash-128-is-the-address"),
        pytest.param("2001:DB8::5", 128, "2001:db8::5", id="v6-normalized"),
        pytest.param("::1", 64, "::/64", id="v6-loopback"),
        pytest.param("fe80::1%eth0", 64, "fe80::/64", id="zone-id-dropped"),
        pytest.param("1.2.3.4:80", 64, None, id="not-an-address"),
        pytest.param("", 64, None, id="empty"),
    ],
)
def test_address_keys_mask_ipv6_only(ip: str, prefix: int, key: str | None) -> None:
    assert address_key(ip, prefix) == key


@pytest.mark.parametrize(
    ("entries", "network", "overlaps"),
    [
        pytest.param(["2001:db8:0:1::1"], "2001:db8:0:1::/64", True, id="holds-a-member"),
        pytest.param(["2001:db8::/32"], "2001:db8:0:1::/64", True, id="inside-a-member"),
        pytest.param(["2001:db8:0:1::/64"], "2001:db8:0:1::/64", True, id="equal"),
        pytest.param(["2001:db8:0:2::1"], "2001:db8:0:1::/64", False, id="neighbour"),
        pytest.param(["2001:db9::/32"], "2001:db8:0:1::/64", False, id="disjoint-larger"),
        pytest.param(["127.0.0.1"], "2001:db8:0:1::/64", False, id="v4-member-v6-network"),
        pytest.param(["127.0.0.1"], "::/64", True, id="v6-network-holding-mapped-space"),
        pytest.param(["10.0.0.0/8"], "10.1.0.0/16", True, id="v4-inside"),
        pytest.param(["10.1.2.3"], "10.1.0.0/16", True, id="v4-holds"),
        pytest.param(["10.1.2.3"], "::ffff:10.1.0.0/112", True, id="mapped-network"),
        pytest.param([], "::/0", False, id="empty-set"),
    ],
)
def test_ipset_overlaps(entries: list[str], network: str, overlaps: bool) -> None:
    assert IpSet.build(entries).overlaps(ipaddress.ip_network(network)) is overlaps


@given(
    entry=st.ip_addresses(v=6).flatmap(lambda a: st.integers(0, 128).map(lambda n: f"{a}/{n}")),
    probe=st.ip_addresses(v=6).flatmap(lambda a: st.integers(0, 128).map(lambda n: f"{a}/{n}")),
)
def test_ipset_overlaps_agrees_with_ipaddress(entry: str, probe: str) -> None:
    mine, theirs = ipaddress.ip_network(entry, strict=False), ipaddress.ip_network(probe, strict=False)
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if mine.overlaps(mapped) or theirs.overlaps(mapped):
        return  # mapped space is folded into IPv4, which ipaddress does not know
    assert IpSet.build([entry]).overlaps(theirs) is mine.overlaps(theirs)


NOW = 1_000_000.0
WHITE = IpSet.build(["10.0.0.0/8", "2001:db8::/32"])
BLACK = IpSet.build(["10.0.0.50", "2001:db8::bad"])


_ALLOWED = IpVerdict(True, "no_whitelist")


def ban(cidr: str, expires_at: float) -> IpRule:
    """An automatic ban, as the tracker writes it."""
    return IpRule(ban_id(cidr), cidr, "deny", expires_at, "authentication failures", NOW - 1)


def rules(*entries: tuple[str, Action, float | None] | IpRule) -> DynamicRules:
    table = DynamicRules(clock=lambda: NOW)
    for index, entry in enumerate(entries):
        table.add(entry if isinstance(entry, IpRule) else IpRule(f"r{index}", *entry))
    return table


@pytest.mark.parametrize(
    ("ip", "whitelist", "blacklist", "dynamic", "verdict"),
    [
        pytest.param("1.2.3.4", None, EMPTY, rules(), IpVerdict(True, "no_whitelist"), id="no-lists"),
        pytest.param("1.2.3.4", EMPTY, EMPTY, rules(), IpVerdict(True, "no_whitelist"), id="empty-whitelist"),
        pytest.param("10.1.1.1", WHITE, EMPTY, rules(), IpVerdict(True, "whitelisted"), id="whitelisted-v4"),
        pytest.param("2001:db8::7", WHITE, EMPTY, rules(), IpVerdict(True, "whitelisted"), id="whitelisted-v6"),
        pytest.param("::ffff:10.1.1.1", WHITE, EMPTY, rules(), IpVerdict(True, "whitelisted"), id="whitelisted-mapped"),
        pytest.param("11.0.0.0", WHITE, EMPTY, rules(), IpVerdict(False, "not_whitelisted"), id="outside-whitelist"),
        pytest.param("2001:db9::", WHITE, EMPTY, rules(), IpVerdict(False, "not_whitelisted"), id="outside-v6"),
        pytest.param("10.0.0.50", WHITE, BLACK, rules(), IpVerdict(False, "blacklisted"), id="blacklist-wins"),
        pytest.param("::ffff:10.0.0.50", WHITE, BLACK, rules(), IpVerdict(False, "blacklisted"), id="mapped-black"),
        pytest.param("2001:db8::bad", WHITE, BLACK, rules(), IpVerdict(False, "blacklisted"), id="v6-blacklist-wins"),
        pytest.param("10.0.0.51", WHITE, BLACK, rules(), IpVerdict(True, "whitelisted"), id="blacklist-neighbour"),
        pytest.param("10.0.0.50", None, BLACK, rules(), IpVerdict(False, "blacklisted"), id="blacklist-alone"),
        pytest.param(None, None, BLACK, rules(), IpVerdict(True, "no_whitelist"), id="unknown-no-whitelist"),
        pytest.param("garbage", None, BLACK, rules(), IpVerdict(True, "no_whitelist"), id="garbage-no-whitelist"),
        pytest.param(None, WHITE, EMPTY, rules(), IpVerdict(False, "unknown_address"), id="unknown-whitelist"),
        pytest.param("garbage", WHITE, EMPTY, rules(), IpVerdict(False, "unknown_address"), id="garbage-whitelist"),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.0.0/16", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="dynamic-deny-beats-static-allow",
        ),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.1.1", "deny", NOW + 1)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="ban-in-force",
        ),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.1.1", "deny", NOW)),
            IpVerdict(True, "whitelisted"),
            id="ban-expired-at-its-instant",
        ),
        pytest.param(
            "10.0.0.50",
            WHITE,
            BLACK,
            rules(("10.0.0.50", "allow", None)),
            IpVerdict(False, "blacklisted"),
            id="dynamic-allow-never-beats-blacklist",
        ),
        pytest.param(
            "10.0.0.9",
            None,
            EMPTY,
            rules(("10.0.0.9", "allow", None), ("10.0.0.9", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r1"),
            id="dynamic-deny-beats-dynamic-allow",
        ),
        pytest.param(
            "8.8.8.8",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(False, "not_whitelisted"),
            id="dynamic-allow-makes-a-whitelist",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(True, "dynamic_allow", "r0"),
            id="dynamic-allow",
        ),
        pytest.param(
            "192.0.2.1",
            WHITE,
            EMPTY,
            rules(("192.0.2.0/24", "allow", NOW + 60)),
            IpVerdict(True, "dynamic_allow", "r0"),
            id="dynamic-allow-extends-static",
        ),
        pytest.param(
            "8.8.8.8",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", NOW - 1)),
            IpVerdict(True, "no_whitelist"),
            id="expired-dynamic-allow-is-no-whitelist",
        ),
        pytest.param(
            None,
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(False, "unknown_address"),
            id="unknown-with-dynamic-whitelist",
        ),
        pytest.param(
            "::ffff:1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="mapped-client-dynamic-deny",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("::ffff:1.1.1.0/120", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="mapped-dynamic-rule",
        ),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.1.1", "deny", NOW + 60), ban("10.1.1.1", NOW + 30)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="an-operator-deny-is-named-before-a-ban",
        ),
        pytest.param(
            "2001:db8:0:1::9",
            None,
            EMPTY,
            rules(ban("2001:db8:0:1::/64", NOW + 30)),
            IpVerdict(False, "banned", "ban:2001:db8:0:1::_64", NOW + 30),
            id="banned-by-network",
        ),
        pytest.param(
            "2001:db8:0:2::9", None, EMPTY, rules(ban("2001:db8:0:1::/64", NOW + 30)), _ALLOWED, id="other-network"
        ),
        pytest.param(
            "::ffff:10.1.1.1",
            WHITE,
            EMPTY,
            rules(ban("10.1.1.1", NOW + 30)),
            IpVerdict(False, "banned", "ban:10.1.1.1", NOW + 30),
            id="banned-and-whitelisted",
        ),
        pytest.param(
            "10.1.1.1", WHITE, EMPTY, rules(ban("10.1.1.1", NOW)), IpVerdict(True, "whitelisted"), id="ban-over"
        ),
        pytest.param(
            "11.1.1.1",
            WHITE,
            EMPTY,
            rules(ban("11.1.1.1", NOW + 30)),
            IpVerdict(False, "not_whitelisted"),
            id="off-the-whitelist-is-named-before-a-ban",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None), ban("1.1.1.1", NOW + 30)),
            IpVerdict(False, "banned", "ban:1.1.1.1", NOW + 30),
            id="a-dynamic-allow-never-beats-a-ban",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="a-deny-rule-not-named-ban-is-an-operators",
        ),
    ],
)
def test_ip_decisions(
    ip: str | None, whitelist: IpSet | None, blacklist: IpSet, dynamic: DynamicRules, verdict: IpVerdict
) -> None:
    assert decide(ip, whitelist=whitelist, blacklist=blacklist, dynamic=dynamic, now=NOW) == verdict


ADMIN_LIST = IpSet.build(["127.0.0.1", "::1"])


@pytest.mark.parametrize(
    ("ip", "whitelist", "dynamic", "verdict"),
    [
        pytest.param("127.0.0.1", ADMIN_LIST, rules(), IpVerdict(True, "whitelisted"), id="listed"),
        pytest.param(
            "198.51.100.7",
            ADMIN_LIST,
            rules(("198.51.100.7", "allow", None)),
            IpVerdict(False, "not_whitelisted"),
            id="dynamic-allow-does-not-widen",
        ),
        pytest.param(
            "127.0.0.1",
            ADMIN_LIST,
            rules(("127.0.0.1", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="dynamic-deny-still-applies",
        ),
        pytest.param(
            "198.51.100.7",
            None,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(True, "no_whitelist"),
            id="dynamic-allow-alone-is-no-whitelist",
        ),
        pytest.param(
            "127.0.0.1",
            ADMIN_LIST,
            rules(ban("127.0.0.1", NOW + 30)),
            IpVerdict(False, "banned", "ban:127.0.0.1", NOW + 30),
            id="a-ban-on-a-listed-address-says-banned",
        ),
        pytest.param(
            "198.51.100.7",
            ADMIN_LIST,
            rules(ban("198.51.100.7", NOW + 30)),
            IpVerdict(False, "not_whitelisted"),
            id="a-ban-off-the-list-says-not-listed",
        ),
    ],
)
def test_decisions_that_ignore_dynamic_allows(
    ip: str, whitelist: IpSet | None, dynamic: DynamicRules, verdict: IpVerdict
) -> None:
    assert decide(ip, whitelist=whitelist, blacklist=EMPTY, dynamic=dynamic, now=NOW, dynamic_allow=False) == verdict


@given(ip=st.one_of(st.none(), st.text(max_size=60), st.ip_addresses().map(str)))
def test_decide_never_raises_and_fails_closed_with_a_whitelist(ip: str | None) -> None:
    verdict = decide(ip, whitelist=WHITE, blacklist=BLACK, dynamic=rules(), now=NOW)
    address = parse_ip(ip) if ip is not None else None
    assert verdict.allowed is (address is not None and address in WHITE and address not in BLACK)


@given(ip=st.ip_addresses())
def test_a_blacklisted_address_is_denied_whatever_else_allows_it(ip: Any) -> None:
    everything = IpSet.build(["0.0.0.0/0", "::/0"])
    dynamic = rules((str(ip), "allow", None))
    verdict = decide(str(ip), whitelist=everything, blacklist=IpSet.build([str(ip)]), dynamic=dynamic, now=NOW)
    assert verdict == IpVerdict(False, "blacklisted")


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
    assert len(table._expiries) < 200


def test_ip_rule_new_validates_and_normalizes() -> None:
    rule = IpRule.new("10.1.2.3/8", "deny", now=NOW, duration=60, reason="abuse")
    assert (rule.cidr, rule.expires_at, rule.created_at, rule.reason) == ("10.0.0.0/8", NOW + 60, NOW, "abuse")
    assert len(rule.id) == 16
    assert IpRule.new("::1", "allow", now=NOW).expires_at is None
    with pytest.raises(ValueError):
        IpRule.new("10.0.0.256", "deny", now=NOW)


@pytest.mark.anyio
async def test_memory_store_add_list_remove_and_notify() -> None:
    clock = Clock(NOW)
    store = MemoryIpRuleStore(clock=clock)
    changes: list[RuleChange] = []
    unsubscribe = store.subscribe(changes.append)
    rule = IpRule("a", "1.1.1.1", "deny", NOW + 10)
    await store.add(rule)
    await store.add(IpRule("b", "2.2.2.2", "allow", None))
    assert [r.id for r in await store.list()] == ["a", "b"]
    assert await store.remove("b") is True
    assert await store.remove("b") is False
    clock.now = NOW + 10
    assert await store.list() == []
    unsubscribe()
    unsubscribe()
    await store.add(IpRule("c", "3.3.3.3", "deny", None))
    assert changes == [
        RuleChange("a", rule),
        RuleChange("b", IpRule("b", "2.2.2.2", "allow", None)),
        RuleChange("b", None),
    ]


@pytest.mark.anyio
async def test_memory_store_refuses_malformed_rules_without_notifying() -> None:
    store = MemoryIpRuleStore()
    changes: list[RuleChange] = []
    store.subscribe(changes.append)
    with pytest.raises(ValueError):
        await store.add(IpRule("a", "nope", "deny"))
    assert changes == []


@pytest.mark.anyio
async def test_the_index_follows_its_store() -> None:
    clock = Clock(NOW)
    store = MemoryIpRuleStore(clock=clock)
    await store.add(IpRule("old", "1.1.1.1", "deny", None))
    index = DynamicRules(clock=clock)
    index.add(IpRule("stale", "9.9.9.9", "deny", None))  # not in the store: dropped on load
    unsubscribe = await index.follow(store)
    assert [rule.id for rule in index.rules(NOW)] == ["old"]
    await store.add(IpRule("new", "2.2.2.2", "deny", NOW + 60))
    assert index.match(ipaddress.ip_address("2.2.2.2"), "deny", NOW) is not None  # at once
    await store.remove("old")
    assert index.match(ipaddress.ip_address("1.1.1.1"), "deny", NOW) is None
    unsubscribe()
    await store.add(IpRule("unseen", "3.3.3.3", "deny", None))
    assert [rule.id for rule in index.rules(NOW)] == ["new"]


class RacyStore(MemoryIpRuleStore):
    """A store whose list() sees a change land while it is being read."""

    async def list(self) -> list[IpRule]:
        rules = await super().list()
        await self.add(IpRule("during-load", "4.4.4.4", "deny", None))
        return rules


@pytest.mark.anyio
async def test_changes_during_the_initial_load_are_not_lost() -> None:
    index = DynamicRules(clock=lambda: NOW)
    await index.follow(RacyStore(clock=lambda: NOW))
    assert [rule.id for rule in index.rules(NOW)] == ["during-load"]


class BrokenStore(MemoryIpRuleStore):
    async def list(self) -> list[IpRule]:
        raise OSError("store down")


@pytest.mark.anyio
async def test_a_failed_load_unsubscribes() -> None:
    store = BrokenStore()
    with pytest.raises(OSError):
        await DynamicRules().follow(store)
    assert store._subscribers._listeners == []


def resolved(ip: str | None, method: str = "GET", path: str = "/") -> Scope:
    """A request scope as the client-address layer leaves it."""
    scope = make_scope(method, path)
    scope[CLIENT_IP_KEY] = ip
    return scope


def filter_layer(
    *, whitelist: IpSet | None = None, blacklist: IpSet = EMPTY, dynamic: DynamicRules | None = None
) -> tuple[IPFilter, SecurityCounters]:
    counters = SecurityCounters()
    layer = IPFilter(
        ok_app,
        whitelist=whitelist,
        blacklist=blacklist,
        dynamic=dynamic or DynamicRules(clock=lambda: NOW),
        counters=counters,
        clock=lambda: NOW,
    )
    return layer, counters


@pytest.mark.anyio
async def test_layer_refuses_with_403_json_and_counts() -> None:
    layer, counters = filter_layer(whitelist=WHITE, blacklist=BLACK)
    sent = await call(layer, resolved("10.0.0.50", "POST", "/mcp/x"), b"{}")
    assert sent.status == 403
    assert sent.headers["content-type"] == "application/json"
    body = sent.json()
    assert body["error"] == "ip_blocked"
    assert "10.0.0" not in body["message"] and "blacklist" not in body["message"]
    assert (counters.ip_blocked, counters.security_violations) == (1, 1)
    assert counters.last_violation is not None


@pytest.mark.anyio
async def test_layer_lets_allowed_addresses_through_untouched() -> None:
    layer, counters = filter_layer(whitelist=WHITE, blacklist=BLACK)
    sent = await call(layer, resolved("10.0.0.51", "POST"), b"payload")
    assert (sent.status, sent.body) == (200, b"payload")
    assert counters.ip_blocked == counters.security_violations == 0


@pytest.mark.anyio
async def test_layer_refuses_an_unknown_address_when_a_whitelist_exists() -> None:
    layer, counters = filter_layer(whitelist=WHITE)
    sent = await call(layer, resolved(None))
    assert sent.status == 403
    assert counters.ip_blocked == 1


@pytest.mark.anyio
async def test_layer_without_a_resolved_address_judges_the_socket_peer() -> None:
    layer, _ = filter_layer(whitelist=WHITE)
    assert (await call(layer, make_scope(client=("10.0.0.1", 1)))).status == 200
    assert (await call(layer, make_scope(client=("127.0.0.1", 1)))).status == 403
    assert (await call(layer, make_scope(client=None))).status == 403


@pytest.mark.anyio
async def test_a_dynamic_ban_takes_effect_on_the_next_request_and_lifts() -> None:
    clock = Clock(NOW)
    dynamic = DynamicRules(clock=clock)
    counters = SecurityCounters()
    layer = IPFilter(ok_app, whitelist=None, blacklist=EMPTY, dynamic=dynamic, counters=counters, clock=clock)
    assert (await call(layer, resolved("198.51.100.7"))).status == 200
    dynamic.add(IpRule("ban", "198.51.100.7", "deny", NOW + 600))
    assert (await call(layer, resolved("198.51.100.7"))).status == 403
    assert (await call(layer, resolved("198.51.100.8"))).status == 200
    clock.now = NOW + 600
    assert (await call(layer, resolved("198.51.100.7"))).status == 200


@pytest.mark.anyio
async def test_a_banned_client_is_told_so_and_when_to_come_back() -> None:
    clock = Clock(NOW)
    dynamic = DynamicRules(clock=clock)
    counters = SecurityCounters()
    layer = IPFilter(ok_app, whitelist=None, blacklist=EMPTY, dynamic=dynamic, counters=counters, clock=clock)
    dynamic.add(ban("2001:db8:0:1::/64", NOW + 600))
    dynamic.add(IpRule("operator", "198.51.100.0/24", "deny", NOW + 600))
    clock.now = NOW + 0.5
    sent = await call(layer, resolved("2001:db8:0:1::77"))
    assert (sent.status, sent.headers["retry-after"]) == (403, "600")
    assert sent.json()["error"] == "banned"
    assert sent.json()["retry_after"] == 600
    clock.now = NOW + 599.2
    assert (await call(layer, resolved("2001:db8:0:1::78"))).headers["retry-after"] == "1"
    operator = await call(layer, resolved("198.51.100.1"))
    assert (operator.status, operator.json()["error"]) == (403, "ip_blocked")
    assert "retry-after" not in operator.headers, "an operator's rule is not a ban"
    assert counters.ip_blocked == 3
    dynamic.add(IpRule("ban:203.0.113.9", "203.0.113.9", "deny", None))
    forever = await call(layer, resolved("203.0.113.9"))
    assert (forever.status, forever.json()["retry_after"]) == (403, None)
    assert "retry-after" not in forever.headers


def test_bans_are_listed_apart_from_operator_rules() -> None:
    table = rules(
        ("10.0.0.1", "deny", None), ban("10.0.0.2", NOW + 5), ("10.0.0.3", "allow", None), ban("::/64", NOW + 1)
    )
    assert [rule.id for rule in table.bans(NOW)] == ["ban:::_64", "ban:10.0.0.2"]
    assert [rule.id for rule in table.bans(NOW + 1)] == ["ban:10.0.0.2"]


@pytest.mark.anyio
async def test_behind_the_client_address_layer_a_spoofed_header_changes_nothing() -> None:
    inner, counters = filter_layer(blacklist=IpSet.build(["198.51.100.7"]))
    stack = ClientAddress(inner, trusted=TrustedProxies.build(["10.0.0.0/8"]))
    spoofed = make_scope(headers=[("X-Forwarded-For", "1.1.1.1")], client=("198.51.100.7", 5))
    assert (await call(stack, spoofed)).status == 403
    relayed = make_scope(headers=[("X-Forwarded-For", "198.51.100.7")], client=("10.0.0.2", 5))
    assert (await call(stack, relayed)).status == 403
    clean = make_scope(headers=[("X-Forwarded-For", "198.51.100.7, 203.0.113.1")], client=("10.0.0.2", 5))
    assert (await call(stack, clean)).status == 200
    assert counters.ip_blocked == 2


@pytest.mark.anyio
async def test_layer_can_ignore_dynamic_allows() -> None:
    dynamic = rules(("198.51.100.7", "allow", None))
    counters = SecurityCounters()
    admin = IPFilter(
        ok_app, whitelist=ADMIN_LIST, blacklist=EMPTY, dynamic=dynamic, counters=counters, dynamic_allow=False
    )
    assert (await call(admin, resolved("198.51.100.7"))).status == 403
    data, _ = filter_layer(whitelist=ADMIN_LIST, dynamic=dynamic)
    assert (await call(data, resolved("198.51.100.7"))).status == 200


@pytest.mark.anyio
async def test_layer_closes_a_refused_websocket_and_passes_lifespan() -> None:
    layer, counters = filter_layer(blacklist=IpSet.build(["1.1.1.1"]))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await layer({"type": "websocket", "headers": [], CLIENT_IP_KEY: "1.1.1.1"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert counters.ip_blocked == 1
    passed: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["type"])

    lifespan_layer = IPFilter(lifespan_app, whitelist=WHITE, blacklist=EMPTY, dynamic=DynamicRules(), counters=counters)
    await lifespan_layer({"type": "lifespan"}, receive, send)
    assert passed == ["lifespan"]
