"""Addresses and networks: the IpSet membership and overlap tables, parsing, and address keys."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_barbican.security.addresses import IpSet, address_key, parse_ip


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
