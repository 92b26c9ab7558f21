"""Change notices: how a change to the store reaches the in-process tables that follow it.

Every table of every backend tells its changes through one `Subscribers`: the memory and
SQLite stores right after their own writes, the Redis store from its change channel (the
changes of every replica, its own included, in the order the server made them). `follow` is
how an in-process table (the dynamic rule index, the issued token book) loads a table and
then keeps up with it without losing a change made meanwhile.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable
from typing import Generic, Protocol

from mcp_barbican.logs import log_unexpected
from mcp_barbican.storage.records import Change, R

__all__ = ["Listener", "Subscribers", "Unsubscribe", "follow"]

logger = logging.getLogger(__name__)

Listener = Callable[[Change[R]], None]
Unsubscribe = Callable[[], None]


class Subscribers(Generic[R]):
    """The listeners of one table: `subscribe` for the interface, `notify` after each change.

    Listeners run on the event loop and must not block. One that raises is logged and the
    others still hear of the change: the write it reports has happened.
    """

    def __init__(self) -> None:
        self._listeners: builtins.list[Listener[R]] = []

    def __len__(self) -> int:
        return len(self._listeners)

    def subscribe(self, listener: Listener[R]) -> Unsubscribe:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def notify(self, change: Change[R]) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:
                log_unexpected(logger, "a follower of the %s table failed on the change of %r", change.table, change.id)


class Followed(Protocol[R]):
    """What `follow` needs of a table (every `storage.base.Table` has it)."""

    async def list(self) -> builtins.list[R]: ...

    def subscribe(self, listener: Listener[R]) -> Unsubscribe: ...


async def follow(table: Followed[R], load: Callable[[Iterable[R]], None], apply: Listener[R]) -> Unsubscribe:
    """`load` every record of `table`, then `apply` each change it tells from now on; returns the unsubscribe.

    Changes told while the list is loading are applied after it, so none is lost.
    """
    backlog: builtins.list[Change[R]] = []
    loading = True

    def on_change(change: Change[R]) -> None:
        if loading:
            backlog.append(change)
        else:
            apply(change)

    unsubscribe = table.subscribe(on_change)
    try:
        load(await table.list())
    except BaseException:
        unsubscribe()
        raise
    for change in backlog:
        apply(change)
    loading = False
    return unsubscribe
