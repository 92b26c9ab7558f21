"""Shared mode's pool of upstream sessions, one per principal (server/pool.py), with stand-in links."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

from mcp_barbican.exceptions import UpstreamUnavailable
from mcp_barbican.server.pool import CapacityError, SharedLinks, oldest_idle

if TYPE_CHECKING:
    from mcp_barbican.server.link import Link

pytestmark = pytest.mark.anyio


class FakeLink:
    def __init__(self, name: str = "", *, idle_since: float = 0.0, sessions: int = 0) -> None:
        self.name = name
        self.idle_since = idle_since
        self.sessions = {str(n): object() for n in range(sessions)}
        self.closed = False

    def busy(self) -> bool:
        return bool(self.sessions)

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ([], None),
        ([("a", 5.0, 1)], None),
        ([("a", 5.0, 0)], "a"),
        ([("a", 5.0, 0), ("b", 3.0, 0), ("c", 1.0, 2)], "b"),
        ([("a", 1.0, 0), ("b", 3.0, 0)], "a"),
    ],
)
def test_the_longest_idle_link_is_reclaimed_first(links: list[tuple[str, float, int]], expected: str | None) -> None:
    found = oldest_idle([FakeLink(name, idle_since=since, sessions=n) for name, since, n in links])
    assert (found.name if found else None) == expected


class Opener:
    """Opens FakeLinks, slowly, counting them; fails while `failing` is set."""

    def __init__(self) -> None:
        self.opened: list[FakeLink] = []
        self.failing = False

    async def __call__(self) -> Link:
        await anyio.sleep(0.05)
        if self.failing:
            raise UpstreamUnavailable("cannot start")
        link = FakeLink(f"link{len(self.opened)}")
        self.opened.append(link)
        return cast("Link", link)


async def take(pool: SharedLinks, principal: str | None) -> FakeLink:
    return cast(FakeLink, await pool.acquire(principal))


def _pool(opener: Opener, limit: int = 10) -> SharedLinks:
    return SharedLinks(opener, limit=limit, idle_timeout=60)


async def test_concurrent_clients_of_one_principal_open_one_link() -> None:
    opener = Opener()
    pool = _pool(opener)
    got: list[Any] = []

    async def acquire(principal: str | None) -> None:
        got.append((principal, await take(pool, principal)))

    async with anyio.create_task_group() as group:
        for principal in ("a", "a", "b", "a", None, None):
            group.start_soon(acquire, principal)
    assert len(opener.opened) == 3
    by_principal = {principal: {id(link) for p, link in got if p == principal} for principal, _ in got}
    assert all(len(ids) == 1 for ids in by_principal.values())
    assert len({next(iter(ids)) for ids in by_principal.values()}) == 3


async def test_the_probe_link_goes_to_the_first_principal_only() -> None:
    opener = Opener()
    pool = _pool(opener)
    spare = FakeLink("spare")
    assert pool.offer_spare(cast("Link", spare))
    assert not pool.offer_spare(cast("Link", FakeLink("second")))
    assert await take(pool, "a") is spare
    assert await take(pool, "b") is not spare
    assert await take(pool, "a") is spare


async def test_concurrent_principals_never_overrun_the_limit() -> None:
    opener = Opener()
    pool = _pool(opener, limit=2)
    outcomes: dict[str, str] = {}

    async def acquire(principal: str) -> None:
        try:
            await take(pool, principal)
            outcomes[principal] = "ok"
        except CapacityError:
            outcomes[principal] = "full"

    async with anyio.create_task_group() as group:
        for principal in "abcd":
            group.start_soon(acquire, principal)
    assert sorted(outcomes.values()) == ["full", "full", "ok", "ok"]
    assert len(opener.opened) == len(pool) == 2


async def test_an_idle_link_makes_room_and_a_busy_one_does_not() -> None:
    opener = Opener()
    pool = _pool(opener, limit=1)
    link_a = await take(pool, "a")
    link_a.sessions = {"s": object()}
    assert not pool.has_room("b") and pool.has_room("a")
    with pytest.raises(CapacityError):
        await take(pool, "b")
    link_a.sessions = {}
    assert pool.has_room("b")
    assert await take(pool, "b") is not link_a
    assert link_a.closed and "a" not in pool.links and len(pool) == 1


async def test_a_failed_open_reaches_every_waiter_and_holds_no_slot() -> None:
    opener = Opener()
    opener.failing = True
    pool = _pool(opener, limit=1)
    failures: list[str] = []

    async def acquire() -> None:
        try:
            await take(pool, "a")
        except UpstreamUnavailable as exc:
            failures.append(str(exc))

    async with anyio.create_task_group() as group:
        group.start_soon(acquire)
        group.start_soon(acquire)
    assert failures == ["cannot start", "cannot start"] and len(pool) == 0
    opener.failing = False
    assert await take(pool, "b") is opener.opened[0]


async def test_links_unused_for_the_idle_timeout_are_closed() -> None:
    opener = Opener()
    pool = SharedLinks(opener, limit=5, idle_timeout=0.1)
    spare = FakeLink("spare")
    pool.offer_spare(cast("Link", spare))
    await pool.expire()
    assert not spare.closed and cast(object, pool.spare) is spare
    await anyio.sleep(0.2)
    await pool.expire()
    assert spare.closed and pool.spare is None
    idle = await take(pool, "idle")
    busy = await take(pool, "busy")
    busy.sessions = {"s": object()}
    idle.idle_since = busy.idle_since = 0.0  # long ago
    await pool.expire()
    assert idle.closed and not busy.closed and list(pool.links) == ["busy"]


async def test_a_link_taken_while_others_close_is_not_expired() -> None:
    opener = Opener()
    pool = SharedLinks(opener, limit=5, idle_timeout=0.1)
    first, second = await take(pool, "a"), await take(pool, "b")
    first.idle_since = second.idle_since = 0.0

    async def slow_close() -> None:
        second.sessions = {"s": object()}  # b's client arrives while a's link is closing
        first.closed = True

    first.aclose = slow_close  # type: ignore[method-assign]
    await pool.expire()
    assert first.closed and not second.closed and list(pool.links) == ["b"]
