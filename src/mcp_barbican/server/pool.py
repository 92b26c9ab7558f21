"""Shared mode's upstream sessions: one per principal.

Clients of one principal share one upstream session (one child process for stdio); two
principals never share one. Over stdio and legacy SSE the upstream does not say which request
a message belongs to, so any sharing across principals could hand one principal's sampling
prompt, log line or elicitation to another; keying the session on the principal makes that
impossible by construction (DESIGN §4).

The pool holds at most `limit` upstream sessions (the MCP's `max_sessions`). A session whose
last client left stays open for `idle_timeout` so that the principal's next client starts
warm; it is the first to be reclaimed when another principal needs room. The probe's session,
opened at start before anyone asked, is kept as a warm spare for the first principal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from mcp_barbican.server.link import Link

__all__ = ["CapacityError", "Reclaimable", "SharedLinks", "oldest_idle"]


class CapacityError(Exception):
    """No more sessions can be opened for this MCP right now."""


class Reclaimable(Protocol):
    """What the pool needs to know of a link to reclaim it."""

    idle_since: float

    def busy(self) -> bool: ...  # pragma: no cover


_L = TypeVar("_L", bound=Reclaimable)


def oldest_idle(links: Iterable[_L]) -> _L | None:
    """The link that has served nobody for longest, if any serves nobody."""
    idle = [link for link in links if not link.busy()]
    return min(idle, key=lambda link: link.idle_since, default=None)


class SharedLinks:
    """The upstream sessions of one shared-mode MCP, keyed by principal id (None: anonymous)."""

    def __init__(self, open_link: Callable[[], Awaitable[Link]], *, limit: int, idle_timeout: float) -> None:
        self._open_link = open_link
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.links: dict[str | None, Link] = {}
        self.spare: Link | None = None
        self._opening: dict[str | None, asyncio.Task[Link]] = {}

    def __len__(self) -> int:
        return len(self.links) + len(self._opening) + (self.spare is not None)

    def owns(self, link: Link) -> bool:
        return link is self.spare or any(mine is link for mine in self.links.values())

    def has_room(self, principal: str | None) -> bool:
        """Whether `principal` can get an upstream session now (its own, or a new or reclaimed one)."""
        if principal in self.links or principal in self._opening or self.spare is not None:
            return True
        return len(self) < self.limit or oldest_idle(self.links.values()) is not None

    def offer_spare(self, link: Link) -> bool:
        """Keep the probe's ready link for the first principal; False if it is not wanted."""
        if self.spare is not None or len(self) >= self.limit:
            return False
        link.idle_since = time.monotonic()
        self.spare = link
        return True

    async def acquire(self, principal: str | None, open_link: Callable[[], Awaitable[Link]] | None = None) -> Link:
        """The principal's upstream session, opened (or taken from the spare) on first use.

        `open_link` opens it when the principal's sessions carry its identity upstream (default: the pool's).

        Returns with no await between finding the link and returning it, so the caller attaches
        its session before anything can reclaim the link as idle.
        """
        while True:
            link = self.links.get(principal)
            if link is not None:
                return link
            task = self._opening.get(principal)
            if task is None:
                if self.spare is not None:
                    self.links[principal], self.spare = self.spare, None
                    continue
                # Reserve the slot before any await, so concurrent principals cannot overrun the limit.
                victim = self._reclaim()
                task = asyncio.create_task(self._open(principal, victim, open_link), name="shared-link-open")
                task.add_done_callback(_retrieve)
                self._opening[principal] = task
            await asyncio.shield(task)

    def _reclaim(self) -> Link | None:
        """Free a slot if the pool is full: the longest-idle link, taken out of the pool."""
        if len(self) < self.limit:
            return None
        victim = oldest_idle(self.links.values())
        if victim is None:
            raise CapacityError(
                f"all {self.limit} upstream sessions (max_sessions; one per principal in shared mode) are in use"
            )
        self._forget(victim)
        return victim

    def _forget(self, link: Link) -> None:
        for principal in [principal for principal, mine in self.links.items() if mine is link]:
            del self.links[principal]

    async def _open(
        self, principal: str | None, victim: Link | None, open_link: Callable[[], Awaitable[Link]] | None
    ) -> Link:
        try:
            if victim is not None:
                await victim.aclose()
            link = await (open_link or self._open_link)()
        finally:
            self._opening.pop(principal, None)
        self.links[principal] = link
        return link

    async def expire(self) -> None:
        """Close the sessions nobody has used for `idle_timeout`, the spare included."""
        cutoff = time.monotonic() - self.idle_timeout
        if self.spare is not None and self.spare.idle_since < cutoff:
            spare, self.spare = self.spare, None
            await spare.aclose()
        for link in list(self.links.values()):
            # Checked link by link: a client may have taken one while an earlier one closed.
            if not link.busy() and link.idle_since < cutoff and self.owns(link):
                self._forget(link)
                await link.aclose()

    async def aclose(self) -> None:
        for task in list(self._opening.values()):
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        links = [*self.links.values(), *([self.spare] if self.spare else [])]
        self.links.clear()
        self.spare = None
        for link in links:
            await link.aclose()


def _retrieve(task: asyncio.Task[Link]) -> None:
    # Every waiter may have gone; the failure was already raised to those that were there.
    if not task.cancelled():
        task.exception()
