"""CORS: which browser origins may read this proxy's answers, and the preflight replies.

Origins compare as scheme + host + port (RFC 6454), lowercase, with the default port of
http and https folded away (`https://a.com:443` is `https://a.com`). A `*.example.com`
entry (stored as `https://*.example.com`) matches real subdomains only: the host must end
in `.example.com` at a label boundary with at least one label before it, and scheme and
port must be equal. So `https://a.b.example.com` matches, while `https://example.com`,
`https://evil-example.com` and `https://example.com.evil.net` do not. `*` admits any
well-formed origin; the literal `null` origin and malformed values never match.

The layer, per request:
- no `Origin` header: passed on untouched (non-browser clients, the common case);
- a preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`): answered here,
  before authentication, since browsers never send credentials on a preflight. Allowed:
  204 with the allowances. Refused (origin, method or a requested header): 403
  `{"error": "cors_rejected"}`;
- any other request with an `Origin`: passed on. An allowed origin gets
  `Access-Control-Allow-Origin` (and `-Credentials`, `-Expose-Headers`) on the response; a
  disallowed one gets no CORS headers at all and is NOT refused here: the Origin check of
  the DNS-rebinding guard answers it 403. Both get `Vary: Origin`.

The layer owns CORS headers: an `Access-Control-*` header set further in is replaced, so
an upstream cannot grant more than the config does.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from mcp_barbican.asgi import get_header, json_error
from mcp_barbican.security.pipeline import Head, Policy
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.config import CorsConfig
    from mcp_barbican.security.counters import SecurityCounters

__all__ = [
    "ALWAYS_EXPOSED",
    "CORS",
    "Origin",
    "OriginPolicy",
    "PreflightPolicy",
    "parse_origin",
    "requested_header_names",
]

#: Exposed on every CORS answer: a browser MCP client must read its session id to go on.
ALWAYS_EXPOSED: Final = "Mcp-Session-Id"
#: Browsers leave these ports out of `Origin`, so an explicit one names the same origin.
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: A serialized origin (RFC 6454 §6.2): no path, no userinfo, IPv6 in brackets.
_ORIGIN_HEADER: Final = b"origin"
_ORIGIN: Final = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::(\d{1,5}))?")
#: One DNS label (RFC 1123, plus "_" as real names use it); lowercase input.
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
#: An HTTP field name (RFC 9110 token), lowercased.
_FIELD_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: Longest piece of a client-sent value quoted back in an error message.
_SHOWN_MAX: Final = 100
#: Response headers this layer owns; the inner app's are replaced.
_CORS_PREFIX: Final = b"access-control-"

Header = tuple[bytes, bytes]

#: A preflight answer depends on all three request headers, so caches must key on them.
_PREFLIGHT_VARY: Final[Header] = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


class Origin(NamedTuple):
    """A parsed origin; `port` is None for the scheme's default port."""

    scheme: str
    host: str
    port: int | None


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` as sent in `Origin`; None for `null` and anything malformed."""
    if not value.isascii():
        return None
    match = _ORIGIN.fullmatch(value.lower())
    if match is None:
        return None
    scheme, host, port_text = match.groups()
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    elif not _valid_name(host):
        return None
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        return None
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return Origin(scheme, host, port)


def _valid_name(host: str) -> bool:
    labels = host.split(".")
    if labels[-1] == "":
        labels.pop()  # the trailing dot of a fully qualified name
    return bool(labels) and all(_LABEL.fullmatch(label) for label in labels)


def _is_ip_literal(host: str) -> bool:
    if host.startswith("["):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class OriginPolicy:
    """The origins CORS admits: exact ones, `*.domain` wildcards, or any (`*`)."""

    exact: frozenset[Origin]
    #: One entry per wildcard, holding the parent domain: `*.example.com` → host `example.com`.
    wildcards: frozenset[Origin]
    any: bool

    @classmethod
    def build(cls, config: CorsConfig) -> OriginPolicy:
        """The policy of a validated CorsConfig; a disabled config admits nothing."""
        if not config.enabled:
            return cls(frozenset(), frozenset(), any=False)
        exact: set[Origin] = set()
        wildcards: set[Origin] = set()
        for entry in config.allowed_origins:
            if entry == "*":
                continue
            scheme, _, rest = entry.partition("://")
            origin = parse_origin(f"{scheme}://{rest.removeprefix('*.')}")
            if origin is None:
                raise ValueError(f"not an origin: {entry!r}")
            (wildcards if rest.startswith("*.") else exact).add(origin)
        return cls(frozenset(exact), frozenset(wildcards), any="*" in config.allowed_origins)

    def allows(self, origin: str) -> bool:
        """Whether a browser page of `origin` may read this proxy's answers."""
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        return self.any or parsed in self.exact or self._matches_wildcard(parsed)

    def _matches_wildcard(self, origin: Origin) -> bool:
        # Walk the parent domains (a.b.example.com → b.example.com → example.com → com):
        # a lookup per label, and the first parent already has one label before it.
        if not self.wildcards or _is_ip_literal(origin.host):
            return False
        parent = origin.host
        while "." in parent:
            parent = parent.partition(".")[2]
            if Origin(origin.scheme, parent, origin.port) in self.wildcards:
                return True
        return False


def requested_header_names(value: str) -> Iterator[str | None]:
    """The names in `Access-Control-Request-Headers`, lowercased; None for a malformed one."""
    for item in value.split(","):
        name = item.strip(" \t").lower()
        if name:
            yield name if _FIELD_NAME.fullmatch(name) else None


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN_MAX else value[:_SHOWN_MAX] + "...")


@dataclass(frozen=True)
class PreflightPolicy:
    """What a preflight may ask for: an admitted origin, a listed method, listed headers."""

    origins: OriginPolicy
    methods: frozenset[str]
    #: Lowercase, as header names compare.
    headers: frozenset[str]

    @classmethod
    def build(cls, config: CorsConfig) -> PreflightPolicy:
        return cls(
            OriginPolicy.build(config),
            frozenset(config.allowed_methods),
            frozenset(name.lower() for name in config.allowed_headers),
        )

    def refusal(self, origin: str, method: str, requested_headers: str | None) -> str | None:
        """None when the preflight is allowed, else why it is not (for the 403 message)."""
        if not self.origins.allows(origin):
            return f"origin {_shown(origin)} is not allowed"
        # Browsers upper-case the standard methods and send others as written, and they
        # compare the answer case-sensitively, so the method must match exactly.
        if method not in self.methods:
            return f"method {_shown(method)} is not allowed (allowed: {', '.join(sorted(self.methods))})"
        for name in requested_header_names(requested_headers or ""):
            if name is None:
                return "malformed Access-Control-Request-Headers"
            if name not in self.headers:
                return f"request header {_shown(name)} is not allowed"
        return None


def _with_cors(headers: Iterable[Header], cors: list[Header]) -> list[Header]:
    """`headers` without the inner app's CORS headers, plus `cors` and `Vary: Origin`."""
    kept = [(name, value) for name, value in headers if not name.lower().startswith(_CORS_PREFIX)]
    varies = {token.strip().lower() for name, value in kept if name.lower() == b"vary" for token in value.split(b",")}
    kept.extend(cors)
    if b"origin" not in varies and b"*" not in varies:
        kept.append((b"vary", b"Origin"))  # a second Vary field adds to the first (RFC 9110 §5.3)
    return kept


class CORS(Policy):
    """Answers CORS preflights and adds CORS headers for admitted origins (see the module doc)."""

    slot = "cors"
    fast_headers = (_ORIGIN_HEADER,)

    def __init__(self, app: ASGIApp, *, config: CorsConfig, counters: SecurityCounters) -> None:
        self.app = app
        self.counters = counters
        self.enabled = config.enabled
        self.preflight = PreflightPolicy.build(config)
        #: The admitted origins, for the DNS-rebinding Origin check (mind `policy.any`).
        self.policy = self.preflight.origins
        self.answer_any = self.policy.any and not config.allow_credentials
        credentials = [(b"access-control-allow-credentials", b"true")] if config.allow_credentials else []
        exposed: dict[str, str] = {}
        for name in (*config.exposed_headers, ALWAYS_EXPOSED):
            exposed.setdefault(name.lower(), name)
        self.actual_headers: list[Header] = [
            *credentials,
            (b"access-control-expose-headers", ", ".join(exposed.values()).encode("latin-1")),
        ]
        self.preflight_headers: list[Header] = [
            (b"access-control-allow-methods", ", ".join(config.allowed_methods).encode("latin-1")),
            (b"access-control-allow-headers", ", ".join(config.allowed_headers).encode("latin-1")),
            (b"access-control-max-age", str(max(int(config.max_age), 0)).encode("latin-1")),
            *credentials,
            _PREFLIGHT_VARY,
        ]

    def fast(self, scope: Scope, head: Head) -> bool:
        """Requests without an Origin pass untouched; browsers' requests are decided in full."""
        return not self.enabled or _ORIGIN_HEADER not in head.values

    def allow_origin(self, origin: bytes) -> Header:
        # The browser compares this value byte for byte with its own Origin, so echo it.
        return (b"access-control-allow-origin", b"*" if self.answer_any else origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = get_header(scope, _ORIGIN_HEADER) if scope["type"] == "http" and self.enabled else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        method = get_header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and method is not None:
            await self.answer_preflight(scope, send, origin, method)
            return
        allowed = self.policy.allows(origin.decode("latin-1"))
        cors = [self.allow_origin(origin), *self.actual_headers] if allowed else []

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_cors(message.get("headers", ()), cors)
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def answer_preflight(self, scope: Scope, send: Send, origin: bytes, method: bytes) -> None:
        requested = get_header(scope, b"access-control-request-headers")
        refusal = self.preflight.refusal(
            origin.decode("latin-1"),
            method.decode("latin-1"),
            requested.decode("latin-1") if requested is not None else None,
        )
        if refusal is not None:
            self.counters.origin_rejected += 1
            self.counters.violation()
            await json_error(send, 403, "cors_rejected", f"CORS preflight refused: {refusal}", [_PREFLIGHT_VARY])
            return
        headers = [self.allow_origin(origin), *self.preflight_headers]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
