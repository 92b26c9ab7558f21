"""Egress: the one policy and the one fetcher for every URL the proxy reaches on its own account."""

from mcp_barbican.egress.fetch import MAX_REDIRECTS, Egress, EgressRefused, EgressResolver, install, installed
from mcp_barbican.egress.policy import EgressPolicy, host_address

__all__ = [
    "MAX_REDIRECTS",
    "Egress",
    "EgressPolicy",
    "EgressRefused",
    "EgressResolver",
    "host_address",
    "install",
    "installed",
]
