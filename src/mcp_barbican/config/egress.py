"""What the proxy may fetch on its own account (`server.egress`): JWKS, OAuth metadata, introspection, token
exchange and the upstreams registered through the admin API. Upstreams written in the config file are the
operator's choice and are not filtered."""

from __future__ import annotations

from mcp_barbican.config.fields import IpOrNetwork, Model

__all__ = ["EgressConfig"]


class EgressConfig(Model):
    """Link-local, cloud metadata, unspecified, multicast and reserved addresses are always refused (and so is
    any IPv6 form that embeds one of them: IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo).

    `allow_private`: loopback, RFC 1918, RFC 6598 shared (100.64.0.0/10), ULA (fc00::/7) and the other
    non-public ranges may be reached. `deny`: networks refused whatever else is set (deny always wins).
    `allow`: networks reached even with `allow_private: false` (never the always-refused ones).
    """

    allow_private: bool = True
    deny: tuple[IpOrNetwork, ...] = ("169.254.0.0/16", "fe80::/10")
    allow: tuple[IpOrNetwork, ...] = ()
