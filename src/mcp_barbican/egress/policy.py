"""The egress decision: which address a host spelling means, and whether the proxy may connect to it.

`host_address` reads a URL host the way a resolver would before asking DNS: brackets and an IPv6
zone id dropped, one trailing dot ignored, and IPv4 in every `inet_aton` spelling (1 to 4 parts,
each decimal, octal with a leading 0 or hex with 0x, the last part filling the remaining bytes:
`2852039166`, `0251.0376.0251.0376`, `0xA9FEA9FE`, `169.254.43518` are all 169.254.169.254).
`EgressPolicy.refusal` is the pure decision for one address; an IPv6 address that carries an IPv4
one (mapped, compatible, NAT64, 6to4, Teredo) is judged by the IPv4 address it reaches as well.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from mcp_barbican.config import EgressConfig

__all__ = ["ALWAYS_REFUSED", "METADATA_ADDRESSES", "EgressPolicy", "host_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Instance metadata services (they hand out cloud credentials): AWS (IPv4, IPv6, ECS task, EKS pod identity),
#: GCP and Azure (169.254.169.254), Azure WireServer, Alibaba Cloud, Oracle Cloud's legacy address.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23",
        "168.63.129.16", "100.100.100.200", "192.0.0.192",
    )
)  # fmt: skip

#: Refused whatever the configuration says, with the reason given.
ALWAYS_REFUSED: Final[tuple[tuple[Network, str], ...]] = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("169.254.0.0/16", "link-local"),
        ("fe80::/10", "link-local"),
        ("0.0.0.0/8", "unspecified"),
        ("::/128", "unspecified"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)

_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_LOW_32: Final = 0xFFFFFFFF
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
_MAX_PARTS: Final = 4


def _part(text: str) -> int:
    if text[:2].lower() == "0x":
        return int(text[2:] or "0", 16)  # a bare 0x is 0 to inet_aton
    return int(text, 8 if text[:1] == "0" else 10)


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    """`text` as inet_aton reads it; None if it is not an IPv4 address in any of its spellings."""
    parts = text.split(".")
    if not 1 <= len(parts) <= _MAX_PARTS or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    *head, last = (_part(part) for part in parts)
    rest = 8 * (_MAX_PARTS - len(head))
    if any(value > 0xFF for value in head) or last >= 1 << rest:
        return None
    number = 0
    for value in head:
        number = number << 8 | value
    return ipaddress.IPv4Address(number << rest | last)


def host_address(host: str) -> Address | None:
    """The address a URL host names without DNS (None: a name, to be resolved)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.partition("%")[0])
        except ValueError:
            return None
    return _ipv4(text[:-1] if text.endswith(".") else text)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches or stands for (mapped, compatible, NAT64, 6to4, Teredo client)."""
    if address in _MAPPED or address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & _LOW_32)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _hard_refusal(address: Address) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for network, reason in ALWAYS_REFUSED:
        if address in network:
            return f"{reason} ({network})"
    return None


def _networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _within(address: Address, networks: tuple[Network, ...]) -> Network | None:
    return next((network for network in networks if address in network), None)


@dataclass(frozen=True)
class EgressPolicy:
    """Whether the proxy may connect to an address (see `EgressConfig`)."""

    allow_private: bool
    deny: tuple[Network, ...]
    allow: tuple[Network, ...]

    @classmethod
    def from_config(cls, config: EgressConfig) -> EgressPolicy:
        return cls(config.allow_private, _networks(config.deny), _networks(config.allow))

    def refusal(self, address: Address) -> str | None:
        """Why `address` is refused (None: it may be reached). Deny and the always-refused ranges win."""
        carried = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        judged = (address,) if carried is None else (address, carried)
        for each in judged:
            reason = _hard_refusal(each)
            if reason is None and (network := _within(each, self.deny)) is not None:
                reason = f"in server.egress.deny ({network})"
            if reason is not None:
                return reason if each is address else f"{reason}, as IPv4 {each}"
        if any(_within(each, self.allow) is not None for each in judged):
            return None
        if not self.allow_private and not all(each.is_global for each in judged):
            return "a private or non-public address (server.egress.allow_private is false)"
        return None
