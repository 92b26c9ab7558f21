"""Whether the state store answers, the decisions made while it does not, and one log line per outage.

A shared store (Redis) has parts that notice an outage on their own: the change listener
(`changes`), and the commands the request path and the admin API send (`commands`). The store
is up while no part is failing. The first part to fail starts an outage (one WARNING line);
the store is up again when every part has recovered (one INFO line). A part that only fails
when asked (`commands`) is probed every `retry` seconds while it fails, so an outage noticed
by a rare command still ends without waiting for the next one.

While the store is down, each feature that depends on it decides by its `fail_mode` (rate
limits admit or refuse; issued tokens are refused or accepted as last known): every decision
is counted by feature and decision, and each feature logs its decision once per outage.
Memory and SQLite stores are in-process: theirs is always up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from mcp_barbican.logs import log_unexpected

__all__ = ["DECISIONS", "FEATURES", "Decision", "Feature", "StoreHealth"]

logger = logging.getLogger(__name__)

Feature = Literal["rate_limit", "auth"]
Decision = Literal["open", "closed"]
FEATURES: Final[tuple[Feature, ...]] = ("rate_limit", "auth")
DECISIONS: Final[tuple[Decision, ...]] = ("open", "closed")

_CONSEQUENCE: Final[dict[tuple[Feature, Decision], str]] = {
    ("rate_limit", "open"): "rate limits: Redis unreachable{why}; admitting requests until it returns",
    ("rate_limit", "closed"): "rate limits: Redis unreachable{why}; refusing requests until it returns",
    ("auth", "open"): "issued tokens: Redis unreachable{why}; accepting the last-known ones until it returns",
    ("auth", "closed"): "issued tokens: Redis unreachable{why}; refusing them (503) until it returns",
}


class StoreHealth:
    """The store's parts that fail, the outage they make, and the decisions taken during it."""

    def __init__(self, *, probe: Callable[[], Awaitable[object]] | None = None, retry: float = 1.0) -> None:
        self.probe = probe
        self.retry = retry
        #: The parts failing now, with what they said.
        self.failing: dict[str, str] = {}
        #: Decisions taken while the store was down, by (feature, decision), since start.
        self.decisions: dict[tuple[Feature, Decision], int] = {}
        #: Called with the new state when the store goes down or comes back.
        self.on_change: list[Callable[[bool], None]] = []
        self._decided_now: dict[tuple[Feature, Decision], int] = {}
        self._since = 0.0
        self._told: set[Feature] = set()
        self._prober: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return not self.failing

    def down(self, part: str, error: object, *, deciding: Feature | None = None) -> None:
        """`part` failed with `error`. `deciding` names the feature about to log its decision, which then
        also tells the outage's start (one line, not two)."""
        starting = not self.failing
        if part not in self.failing:
            self.failing[part] = str(error)
        if part == "commands":
            self._start_probe()
        if not starting:
            return
        self._since = time.monotonic()
        self._told.clear()
        if deciding is None:
            logger.warning("state store: Redis unreachable (%s: %s); retrying", _PARTS.get(part, part), error)
        self._changed(False)

    def restored(self, part: str) -> None:
        """`part` works again; the outage ends when no part is failing."""
        if self.failing.pop(part, None) is None or self.failing:
            return
        took = time.monotonic() - self._since
        made = ", ".join(f"{feature} {decision} x{count}" for (feature, decision), count in self._decided_now.items())
        logger.info("state store: Redis reachable again after %.1f s%s", took, f" (decisions: {made})" if made else "")
        self._decided_now = {}
        self._changed(True)

    def decided(self, feature: Feature, decision: Decision, error: object = None) -> None:
        """Count one outage decision; the feature's first in this outage gets its log line."""
        key = (feature, decision)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        self._decided_now[key] = self._decided_now.get(key, 0) + 1
        if feature not in self._told:
            self._told.add(feature)
            logger.warning(_CONSEQUENCE[key].format(why=f" ({error})" if error is not None else ""))

    def _changed(self, up: bool) -> None:
        for listener in tuple(self.on_change):
            try:
                listener(up)
            except Exception:
                log_unexpected(logger, "state store: a follower of its health failed")

    def _start_probe(self) -> None:
        if self.probe is None or (self._prober is not None and not self._prober.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the next command tells
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        assert self.probe is not None
        while "commands" in self.failing:
            await asyncio.sleep(self.retry)
            try:
                await self.probe()
            except Exception:  # noqa: S112 -- still down; the outage was logged when it started
                continue
            self.restored("commands")

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober


_PARTS: Final = {"changes": "lost the Redis change channel", "commands": "a command failed"}
