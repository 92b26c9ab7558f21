"""DNS-rebinding guard: the Host and Origin headers must name this proxy.

A browser page on an attacker's domain that resolves to 127.0.0.1 still sends its own
name in Host and Origin, so checking both stops it (MCP spec: servers MUST validate
Origin; 403 for a bad Origin). Loopback names are always accepted; the bind address and
`server.allowed_hosts` add the rest. A missing Origin is fine (non-browser clients).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.server.http import get_header, json_error
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["LOOPBACK_NAMES", "AllowedHosts", "HostOriginGuard", "check_host_origin", "split_host"]

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def split_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` or `[v6]:port` into a lowercase host and a port; None if malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") > 1:
        return None  # an unbracketed IPv6 literal is not a valid Host
    else:
        host, _, port_text = value.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return host, int(port_text)
    return host, None


@dataclass(frozen=True)
class AllowedHosts:
    """Host names (any port) and host:port pairs this proxy answers to."""

    names: frozenset[str]
    pairs: frozenset[tuple[str, int]]
    suffixes: tuple[str, ...]

    @classmethod
    def build(cls, bind_host: str, extra: Iterable[str]) -> AllowedHosts:
        names = set(LOOPBACK_NAMES)
        if bind_host not in _WILDCARD_BINDS:
            names.add(bind_host.strip("[]").lower())
        pairs: set[tuple[str, int]] = set()
        suffixes: list[str] = []
        for entry in extra:
            if entry.startswith("*."):
                suffixes.append(entry[1:].lower())
                continue
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"not a host or host:port: {entry!r}")
            host, port = parsed
            if port is None:
                names.add(host)
            else:
                pairs.add((host, port))
        return cls(frozenset(names), frozenset(pairs), tuple(suffixes))

    def admits(self, host: str, port: int | None) -> bool:
        if host in self.names or (port is not None and (host, port) in self.pairs):
            return True
        return any(host.endswith(suffix) for suffix in self.suffixes)


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def _origin_host(origin: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            return None
        return parts.hostname.lower(), parts.port
    except ValueError:
        return None


def check_host_origin(
    host: str | None,
    origin: str | None,
    allowed: AllowedHosts,
    extra_origin: Callable[[str], bool] | None = None,
) -> tuple[int, str] | None:
    """None when the request may proceed, else (status, reason).

    `extra_origin` admits origins beyond this proxy's own names (an MCP's CORS policy).
    """
    parsed = split_host(host) if host is not None else None
    if parsed is None:
        return 421, "missing or malformed Host header"
    if not allowed.admits(*parsed):
        return 421, f"Host {parsed[0]!r} is not served here"
    if origin is None:
        return None
    if extra_origin is not None and extra_origin(origin):
        return None
    origin_host = _origin_host(origin)
    if origin_host is None or not allowed.admits(*origin_host):
        return 403, f"Origin {origin!r} is not allowed"
    return None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HostOriginGuard:
    """Rejects requests whose Host or Origin does not name this proxy, on every route."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed: AllowedHosts,
        origin_allowed: Callable[[Scope, str], bool] | None = None,
        counters: SecurityCounters | None = None,
    ) -> None:
        self.app = app
        self.allowed = allowed
        self.origin_allowed = origin_allowed
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = get_header(scope, b"host")
        origin = get_header(scope, b"origin")
        origin_allowed = self.origin_allowed
        verdict = check_host_origin(
            host.decode("latin-1") if host is not None else None,
            origin.decode("latin-1") if origin is not None else None,
            self.allowed,
            (lambda value: origin_allowed(scope, value)) if origin_allowed is not None else None,
        )
        if verdict is None:
            await self.app(scope, receive, send)
            return
        if self.counters is not None:
            self.counters.origin_rejected += 1
            self.counters.violation()
        status, reason = verdict
        await json_error(send, status, "forbidden_host" if status == 421 else "forbidden_origin", reason)
