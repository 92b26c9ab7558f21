"""The one way out: every URL the proxy fetches on its own account passes `Egress`.

A host is resolved (through an injectable aiohttp resolver), EVERY address it resolves to is
checked, and the connection goes to the checked addresses only: sessions made here use
`EgressResolver`, which hands aiohttp nothing but addresses the policy let through, so a
second DNS answer (rebinding) is never used. IP literals never reach a resolver in aiohttp,
so `request` checks each URL itself before asking, and follows redirects by hand, at most
`max_redirects` of them, checking every hop again. A refusal is an `EgressRefused` (an
aiohttp `ClientConnectionError`, so callers that handle a failed fetch handle it too) naming
the URL and why, logged, counted and reported (`on_refused`, which audits `egress.refused`).
"""

from __future__ import annotations

import contextvars
import logging
import socket
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from mcp_barbican.config import EgressConfig
from mcp_barbican.egress.policy import EgressPolicy, host_address

__all__ = ["MAX_REDIRECTS", "Egress", "EgressRefused", "EgressResolver", "installed", "install"]

logger = logging.getLogger(__name__)

#: Redirects a fetch that follows them at all follows at most.
MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

#: The URL being fetched and what for, so a refusal at connect time names them rather than host:port.
_fetching: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("egress_fetching", default=None)

#: What a refusal reports: the URL (or host:port at connect time), why, and what fetched it.
RefusalHook = Callable[[str, str, str], None]


class EgressRefused(aiohttp.ClientConnectionError):
    """A URL the egress policy refuses; the message names the URL and the reason, in one line."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: refused by the egress policy ({reason})")
        self.target = target
        self.reason = reason


def _shown(url: URL) -> str:
    if not url.absolute:
        return str(url.with_query(None).with_fragment(None))
    return str(url.with_user(None).with_query(None).with_fragment(None))


class Egress:
    """The policy, the resolver behind it, and what a refusal reports (see the module's doc)."""

    def __init__(
        self,
        config: EgressConfig | None = None,
        *,
        resolver: AbstractResolver | None = None,
        on_refused: RefusalHook | None = None,
    ) -> None:
        self.policy = EgressPolicy.from_config(config or EgressConfig())
        self._inner = resolver
        self.on_refused = on_refused
        #: Refusals since start.
        self.refused = 0
        self._pinned: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()

    def configure(self, config: EgressConfig) -> None:
        self.policy = EgressPolicy.from_config(config)

    def refuse(self, target: str, reason: str, purpose: str) -> EgressRefused:
        """Log, count and report one refusal; the error to raise."""
        self.refused += 1
        logger.warning("egress: %s for %s refused (%s)", target, purpose, reason)
        if self.on_refused is not None:
            self.on_refused(target, reason, purpose)
        return EgressRefused(target, reason)

    # -- resolving ---------------------------------------------------------------------

    def _resolver(self) -> AbstractResolver:
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        return self._inner

    async def addresses(
        self, host: str, port: int, *, family: socket.AddressFamily = socket.AF_UNSPEC, purpose: str = "a fetch"
    ) -> list[ResolveResult]:
        """What `host` resolves to, every address checked; EgressRefused if any is refused or none is found."""
        target = f"{host}:{port}"
        fetching = _fetching.get()
        if fetching is not None:
            target, purpose = fetching
        literal = host_address(host)
        if literal is not None:
            found: list[ResolveResult] = [
                {
                    "hostname": host,
                    "host": str(literal),
                    "port": port,
                    "family": socket.AF_INET if literal.version == 4 else socket.AF_INET6,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            ]
        else:
            found = await self._resolver().resolve(host, port, family)  # OSError: aiohttp's "cannot resolve"
        if not found:
            raise self.refuse(target, "resolves to no address", purpose)
        for result in found:
            address = host_address(result["host"])
            reason = "resolves to an unreadable address" if address is None else self.policy.refusal(address)
            if reason is not None:
                shown = result["host"] if literal is None else str(literal)
                raise self.refuse(target, reason if literal is not None else f"resolves to {shown}: {reason}", purpose)
        return found

    def resolver(self, purpose: str = "an upstream connection") -> EgressResolver:
        return EgressResolver(self, purpose)

    async def check_url(self, url: str | URL, purpose: str = "a fetch", *, shown: str | None = None) -> None:
        """Refuse (EgressRefused) a URL that is not http(s), or whose host is or resolves to a refused address.

        `shown`: what a refusal names instead of the URL (one whose path is a secret, as a webhook's).
        """
        parsed = URL(url) if isinstance(url, str) else url
        shown = shown or _shown(parsed)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise self.refuse(shown, "not an http(s) URL with a host", purpose)
        token = _fetching.set((shown, purpose))
        try:
            await self.addresses(parsed.raw_host, parsed.port or 0, purpose=purpose)
        except EgressRefused as exc:
            raise EgressRefused(shown, exc.reason) from None
        except OSError as exc:
            raise EgressRefused(shown, f"{parsed.raw_host} does not resolve: {exc.strerror or exc}") from None
        finally:
            _fetching.reset(token)

    # -- fetching ----------------------------------------------------------------------

    def session(self, purpose: str, **kwargs: Any) -> aiohttp.ClientSession:
        """A client session whose every connection goes to checked addresses only (no proxy variables)."""
        connector = aiohttp.TCPConnector(resolver=self.resolver(purpose))
        session = aiohttp.ClientSession(connector=connector, trust_env=False, **kwargs)
        self._pinned.add(session)
        return session

    async def request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        purpose: str,
        max_redirects: int = 0,
        headers: Mapping[str, str] | None = None,
        shown: str | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """`method url`, the URL and every redirect checked; a redirect past `max_redirects` is the answer.

        `shown`: what logs and refusals name instead of the URL (one whose path is a secret, as a webhook's).
        The caller releases the response (`async with` it, or read it whole).
        """
        target, redirects = URL(url), 0
        while True:
            named = shown or _shown(target)
            if session in self._pinned:  # names are checked (and pinned) by the session's resolver
                self._check_literal(target, purpose, named)
            else:
                await self.check_url(target, purpose, shown=named)
            token = _fetching.set((named, purpose))
            try:
                response = await session.request(method, target, headers=headers, allow_redirects=False, **kwargs)
            finally:
                _fetching.reset(token)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or location is None or redirects >= max_redirects:
                return response
            response.release()
            redirects += 1
            target = target.join(URL(location))
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, kwargs = "GET", {key: value for key, value in kwargs.items() if key not in ("data", "json")}

    def check_literal(self, url: str | URL, purpose: str) -> None:
        """Refuse (EgressRefused) a URL that is not http(s) or whose host is a refused IP literal, without DNS.

        For what cannot wait for a resolver: aiohttp connects to an IP literal without asking one.
        """
        self._check_literal(URL(url) if isinstance(url, str) else url, purpose)

    def _check_literal(self, url: URL, purpose: str, shown: str | None = None) -> None:
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise self.refuse(shown or _shown(url), "not an http(s) URL with a host", purpose)
        address = host_address(url.raw_host)
        if address is not None and (reason := self.policy.refusal(address)) is not None:
            raise self.refuse(shown or _shown(url), reason, purpose)


class EgressResolver(AbstractResolver):
    """An aiohttp resolver that returns only addresses the egress policy let through (the pin)."""

    def __init__(self, egress: Egress, purpose: str) -> None:
        self._egress = egress
        self._purpose = purpose

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await self._egress.addresses(host, port, family=family, purpose=self._purpose)

    async def close(self) -> None:
        """The inner resolver is the `Egress`'s, shared: it stays open."""


_installed = Egress()


def installed() -> Egress:
    """The process's egress (the server installs its own at start-up; until then the default policy)."""
    return _installed


def install(egress: Egress) -> Egress:
    """Make `egress` the process's; returns the one it replaces (tests put it back)."""
    global _installed  # one egress per process, as there is one logging configuration
    previous, _installed = _installed, egress
    return previous
