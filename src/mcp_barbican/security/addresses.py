"""IP addresses and networks: parsing, the set the static lists compile to, and the client's address.

IPv4-mapped IPv6 addresses and networks are folded into IPv4, so `::ffff:10.0.0.1` matches
the entry `10.0.0.0/8` and the reverse. Lookups never scan a list: a set keeps, per prefix
length, the masked integers of its members (`network_keys`), so membership costs one hash
lookup per distinct prefix length whatever the number of entries.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.types import Scope

__all__ = [
    "Address",
    "IpSet",
    "Network",
    "NetworkKey",
    "address_key",
    "client_ip",
    "network_keys",
    "parse_ip",
    "parse_network",
    "unmapped",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_BITS: Final = {4: 32, 6: 128}  # address width per IP version, to turn a prefix length into a shift
#: IPv4-mapped IPv6 (RFC 4291 §2.5.5.2): the same host as the IPv4 address in its low 32 bits.
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_MAPPED_PREFIX: Final = 96  # a mapped network's IPv4 prefix length is its own minus this
_LOW_32_BITS: Final = 0xFFFFFFFF  # where a mapped address keeps its IPv4 address

# (IP version, shift = address bits - prefix length, address >> shift)
NetworkKey = tuple[int, int, int]


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def parse_ip(text: str) -> Address | None:
    """An address from its text (IPv6 zone id dropped, IPv4-mapped as IPv4); None if it is not one."""
    host = text.strip()
    if ":" in host:
        host = host.partition("%")[0]
    if not host.isascii():
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return unmapped(address)


def unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)  # pure: the same few clients recur, and a miss costs a network's str()
def address_key(ip: str, ipv6_prefix: int) -> str | None:
    """What a client address counts as for bans and per-IP limits; None if `ip` is not an address.

    IPv4 (and IPv4-mapped IPv6, folded to IPv4) counts per address; IPv6 per network of
    `ipv6_prefix` bits (1-128), written as a CIDR, since one host usually holds a /64.
    """
    address = parse_ip(ip)
    if address is None:
        return None
    if address.version == 6 and ipv6_prefix < _BITS[6]:
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def parse_network(text: str) -> Network:
    """A single address or CIDR (host bits allowed, as in the config); ValueError if neither."""
    entry = text.strip()
    if not entry.isascii():
        raise ValueError(f"{text!r} is not an IP address or CIDR")
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None


def network_keys(network: Network) -> list[NetworkKey]:
    """The keys a network is stored under; mapped IPv6 is stored as the IPv4 it stands for."""
    keys: list[NetworkKey] = []
    if isinstance(network, ipaddress.IPv6Network):
        if network.prefixlen >= _MAPPED_PREFIX and network.subnet_of(_MAPPED):
            v4 = ipaddress.IPv4Network(
                (int(network.network_address) & _LOW_32_BITS, network.prefixlen - _MAPPED_PREFIX)
            )
            return network_keys(v4)
        if network.supernet_of(_MAPPED):
            keys.append((4, 32, 0))  # it covers every mapped address, hence all of IPv4
    shift = _BITS[network.version] - network.prefixlen
    keys.append((network.version, shift, int(network.network_address) >> shift))
    return keys


@dataclass(frozen=True, slots=True)
class IpSet:
    """A fixed set of addresses and networks with constant-time-per-prefix-length membership."""

    v4: tuple[tuple[int, frozenset[int]], ...] = ()
    v6: tuple[tuple[int, frozenset[int]], ...] = ()
    entries: int = 0

    @classmethod
    def build(cls, entries: Iterable[str]) -> IpSet:
        """Compile single IPs and CIDRs (v4 and v6); ValueError on the first invalid entry."""
        groups: dict[tuple[int, int], set[int]] = {}
        count = 0
        for entry in entries:
            count += 1
            for version, shift, value in network_keys(parse_network(entry)):
                groups.setdefault((version, shift), set()).add(value)
        by_version = {
            version: tuple((shift, frozenset(values)) for (v, shift), values in groups.items() if v == version)
            for version in _BITS
        }
        return cls(by_version[4], by_version[6], count)

    def __contains__(self, address: object) -> bool:
        """An address object or its text; anything that is not an address is not a member."""
        if isinstance(address, str):
            address = parse_ip(address)
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        address = unmapped(address)
        table = self.v4 if address.version == 4 else self.v6
        value = int(address)
        return any(value >> shift in values for shift, values in table)

    def overlaps(self, network: Network) -> bool:
        """Whether any member lies inside `network` or contains it (a mapped network is checked as its IPv4)."""
        for version, shift, value in network_keys(network):
            table = self.v4 if version == 4 else self.v6
            for own_shift, values in table:
                if own_shift >= shift:  # members as large as the network or larger: one may contain it
                    if value >> (own_shift - shift) in values:
                        return True
                elif any(member >> (shift - own_shift) == value for member in values):
                    return True
        return False

    def __bool__(self) -> bool:
        return self.entries > 0

    def __len__(self) -> int:
        return self.entries


def client_ip(scope: Scope) -> str | None:
    """The resolved client address; without the client-address layer in front, the socket peer."""
    if CLIENT_IP_KEY in scope:
        resolved: str | None = scope[CLIENT_IP_KEY]
        return resolved
    client = scope.get("client")
    return str(client[0]) if client else None
