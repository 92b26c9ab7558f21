"""The client's address: the socket peer, or what trusted proxies in front of us say it is.

X-Forwarded-For is believed only when the socket peer is a trusted proxy, and then only as
far as trusted proxies wrote it: the chain is walked from the right past trusted hops and
the first untrusted entry is the client (nginx `real_ip_recursive on`, Traefik
`excludedIPs`). The leftmost entry is whatever the client chose to send, so it is never
taken for its position. When the chain gives no usable answer the peer stands.
`Forwarded` (RFC 7239) is not read; like X-Real-IP it is stripped from untrusted peers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.security.addresses import Address, IpSet, parse_ip
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["ClientAddress", "TrustedProxies", "is_forwarding_header", "parse_hop", "resolve_client_ip"]

_XFF: Final = b"x-forwarded-for"  # the one forwarding header read, and only from trusted peers
#: Headers in which a client could claim another address (or scheme, or host) for itself.
_FORWARDING_HEADERS: Final = frozenset({b"x-real-ip", b"forwarded"})
_FORWARDING_PREFIX: Final = b"x-forwarded-"  # -for, -host, -proto, -port, -prefix...: all client claims
_MAX_PORT_DIGITS: Final = 5  # 65535; longer digit runs are garbage, not ports


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies whose X-Forwarded-For we believe (`server.trusted_proxies`)."""

    networks: IpSet

    @classmethod
    def build(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(IpSet.build(cidrs))

    def __contains__(self, address: object) -> bool:
        return address in self.networks

    def __bool__(self) -> bool:
        return bool(self.networks)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= _MAX_PORT_DIGITS


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def parse_hop(text: str) -> Address | None:
    """One address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`, zone ids allowed."""
    hop = text.strip()
    if hop.startswith("["):
        host, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        return parse_ip(host)
    if hop.count(":") == 1:
        host, _, port = hop.partition(":")
        return parse_ip(host) if _is_port(port) else None
    return parse_ip(hop)


def _walk(peer: Address, forwarded_for: Sequence[str], trusted: TrustedProxies) -> Address:
    """The first untrusted hop from the right; the peer if the chain runs out or turns unreadable."""
    for line in reversed(forwarded_for):
        for entry in reversed(line.split(",")):
            if not entry.strip():
                continue  # RFC 9110 §5.6.1: recipients ignore empty list elements
            hop = parse_hop(entry)
            if hop is None:
                return peer  # what lies further left was written by someone we cannot vouch for
            if hop not in trusted:
                return hop
    return peer


def resolve_client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: TrustedProxies) -> str | None:
    """The client address as text (IPv4-mapped shown as IPv4), or None when the peer is not an IP.

    `forwarded_for` holds every X-Forwarded-For header line in the order received.
    """
    address = parse_hop(peer) if peer is not None else None
    if address is not None and address in trusted:
        address = _walk(address, forwarded_for, trusted)
    return None if address is None else str(address)


def is_forwarding_header(name: bytes) -> bool:
    """Whether a (lowercase) header name is one a client could use to claim another address."""
    return name in _FORWARDING_HEADERS or name.startswith(_FORWARDING_PREFIX)


class ClientAddress:
    """Sets `scope[CLIENT_IP_KEY]` (str, or None when the peer is no IP address) for every request.

    From a peer that is not a trusted proxy, the forwarding headers are removed from the
    scope, so no layer or upstream behind this one can be fooled by them. `scope["client"]`
    is left as the socket peer.
    """

    def __init__(self, app: ASGIApp, *, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = str(client[0]) if client else None
        address = parse_hop(peer) if peer is not None else None
        headers = scope["headers"]
        if address is not None and self.trusted and address in self.trusted:
            lines = [value.decode("latin-1") for name, value in headers if name == _XFF]
            scope[CLIENT_IP_KEY] = _text(_walk(address, lines, self.trusted))
        else:
            # One pass over the names without a call per header: this runs on every request.
            if any(name in _FORWARDING_HEADERS or name[:12] == _FORWARDING_PREFIX for name, _ in headers):
                scope["headers"] = [(name, value) for name, value in headers if not is_forwarding_header(name)]
            scope[CLIENT_IP_KEY] = None if address is None else _text(address)
        await self.app(scope, receive, send)


@functools.lru_cache(maxsize=4096)  # str() of an address is slow and the same peers recur
def _text(address: Address) -> str:
    return str(address)
