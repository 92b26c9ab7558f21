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

from mcp_barbican.asgi import json_error
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["LOOPBACK_NAMES", "AllowedHosts", "HostOriginGuard", "check_host_origin", "split_host"]

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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
    """Host names and host:port pairs this proxy answers to.

    `own` are the loopback names and the bind address: any port in Host (port mappings change
    it), but as an Origin only on the port the request arrived on, since a page on another
    local port is another site. `names` (configured without a port) admit any port both ways.
    """

    own: frozenset[str]
    names: frozenset[str]
    pairs: frozenset[tuple[str, int]]
    suffixes: tuple[str, ...]

    @classmethod
    def build(cls, bind_host: str, extra: Iterable[str]) -> AllowedHosts:
        own = set(LOOPBACK_NAMES)
        if bind_host not in _WILDCARD_BINDS:
            own.add(bind_host.strip("[]").lower())
        names: set[str] = set()
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
        return cls(frozenset(own), frozenset(names), frozenset(pairs), tuple(suffixes))

    def admits(self, host: str, port: int | None) -> bool:
        if host in self.own or host in self.names or (port is not None and (host, port) in self.pairs):
            return True
        return any(host.endswith(suffix) for suffix in self.suffixes)

    def admits_origin(self, host: str, port: int, listener_port: int | None) -> bool:
        if host in self.own:
            return port == listener_port or host in self.names or (host, port) in self.pairs
        return host in self.names or (host, port) in self.pairs or any(host.endswith(s) for s in self.suffixes)


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def _origin_host(origin: str) -> tuple[str, int] | None:
    """An origin's host and port (the scheme's default when absent), or None if it is no http(s) origin."""
    try:
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            return None
        return parts.hostname.lower(), parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return None


def check_host_origin(
    host: str | None,
    origin: str | None,
    allowed: AllowedHosts,
    extra_origin: Callable[[str], bool] | None = None,
    listener_port: int | None = None,
) -> tuple[int, str] | None:
    """None when the request may proceed, else (status, reason).

    `extra_origin` admits origins beyond this proxy's own names (an MCP's CORS policy);
    `listener_port` is the port the request arrived on (None: unknown, so no own-name origin passes).
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
    if origin_host is None or not allowed.admits_origin(*origin_host, listener_port):
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
        host = origin = None
        duplicate = False
        for name, value in scope["headers"]:
            if name == b"host":
                duplicate |= host is not None
                host = value
            elif name == b"origin":
                duplicate |= origin is not None
                origin = value
        if duplicate:
            self._count()
            await json_error(send, 400, "ambiguous_request", "more than one Host or Origin header")
            return
        origin_allowed = self.origin_allowed
        server = scope.get("server")
        verdict = check_host_origin(
            host.decode("latin-1") if host is not None else None,
            origin.decode("latin-1") if origin is not None else None,
            self.allowed,
            (lambda value: origin_allowed(scope, value)) if origin_allowed is not None else None,
            server[1] if server else None,
        )
        if verdict is None:
            await self.app(scope, receive, send)
            return
        self._count()
        status, reason = verdict
        await json_error(send, status, "forbidden_host" if status == 421 else "forbidden_origin", reason)

    def _count(self) -> None:
        if self.counters is not None:
            self.counters.origin_rejected += 1
            self.counters.violation()
