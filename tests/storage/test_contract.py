"""The contract every state store keeps, run against each backend (Redis against a real `redis-server`).

Tables are tested through the one `Table` shape, for each kind of record; rules add expiry
and a size bound; buckets add the all-or-nothing take.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from mcp_barbican.storage import Change, IpRule, McpRecord, PinRecord, RuleTableFull, Storage, Table, TokenRecord
from mcp_barbican.storage.buckets import BucketRef, BucketSpec
from mcp_barbican.storage.memory import MemoryStorage
from mcp_barbican.storage.records import TableName
from mcp_barbican.storage.redis import RedisStorage
from mcp_barbican.storage.sqlite import SqliteStorage
from tests.storage.redis_server import redis_server

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Opener(Protocol):
    def __call__(self, tmp_path: Path, *, clock: Clock, max_rules: int) -> Storage: ...


def _memory(tmp_path: Path, *, clock: Clock, max_rules: int) -> Storage:
    return MemoryStorage(clock=clock, max_rules=max_rules)


def _sqlite(tmp_path: Path, *, clock: Clock, max_rules: int) -> Storage:
    return SqliteStorage(tmp_path / "state.db", clock=clock, max_rules=max_rules)


_prefixes = itertools.count()


def _redis(url: str) -> Opener:
    """Stores on one server; each test's stores share a key prefix of their own (one server serves them all)."""
    prefix = f"test{next(_prefixes)}:"

    def open_redis(tmp_path: Path, *, clock: Clock, max_rules: int) -> Storage:
        return RedisStorage(url, key_prefix=prefix, clock=clock, max_rules=max_rules, server_time=False)

    return open_redis


BACKENDS: dict[str, Opener] = {"memory": _memory, "sqlite": _sqlite}
#: Backends that need a server, and the e2e mark (they start a process).
SERVED = ("redis",)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


class Opened:
    """One backend under test, with its clock; `reopen` builds another store (a smaller rule table)."""

    def __init__(self, opener: Opener, tmp_path: Path) -> None:
        self.opener = opener
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.opened: list[Storage] = []

    def open(self, *, max_rules: int = 100, name: str = "a") -> Storage:
        path = self.tmp_path / name
        path.mkdir(exist_ok=True)
        store = self.opener(path, clock=self.clock, max_rules=max_rules)
        self.opened.append(store)
        return store


@pytest.fixture(params=[*sorted(BACKENDS), *(pytest.param(name, marks=pytest.mark.e2e) for name in SERVED)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opened]:
    opener = _redis(request.getfixturevalue("redis_url")) if request.param == "redis" else BACKENDS[request.param]
    opened = Opened(opener, tmp_path)
    yield opened
    for store in opened.opened:
        await store.aclose()


@pytest.fixture
def store(backend: Opened) -> Storage:
    return backend.open()


# --- every table -------------------------------------------------------------------------------


def _mcp(record_id: str, n: int = 0, created: float = NOW) -> McpRecord:
    return McpRecord(record_id, {"id": record_id, "command": f"cmd{n}", "env": {"KEY": "secret"}}, created, created + n)


def _token(record_id: str, n: int = 0, created: float = NOW) -> TokenRecord:
    return TokenRecord(record_id, f"{n:02x}{record_id.encode().hex()}".ljust(64, "0"), ("r",), ("a",), None, created)


def _rule(record_id: str, n: int = 0, created: float = NOW) -> IpRule:
    return IpRule(record_id, f"10.0.0.{n}", "deny", None, f"rule {n}", created)


def _pin(record_id: str, n: int = 0, created: float = NOW) -> PinRecord:
    definition = {"name": record_id, "description": f"v{n}", "inputSchema": {"type": "object"}}
    findings = [{"rule": "r", "severity": "high", "where": "description", "excerpt": "x"}] if n else []
    return PinRecord(record_id, "m", record_id, f"{n:064x}", definition, "", None, "", "", "", findings, n, created)


#: Each table, and how to make the n-th variant of a record of it.
TABLES: dict[TableName, tuple[Callable[[Storage], Table[Any]], Callable[..., Any]]] = {
    "mcps": (lambda s: s.mcps, _mcp),
    "tokens": (lambda s: s.tokens, _token),
    "rules": (lambda s: s.rules, _rule),
    "pins": (lambda s: s.pins, _pin),
}


@pytest.fixture(params=sorted(TABLES))
def kind(request: pytest.FixtureRequest) -> TableName:
    name: TableName = request.param
    return name


async def test_put_get_list_delete(store: Storage, kind: TableName) -> None:
    table_of, make = TABLES[kind]
    table = table_of(store)
    first, second = make("b", 1, NOW), make("a", 2, NOW + 1)
    await table.put(second)
    await table.put(first)
    assert await table.list() == [first, second], "oldest first"
    assert await table.get("b") == first
    assert await table.get("missing") is None
    await table.put(make("b", 3, NOW))
    assert await table.get("b") == make("b", 3, NOW), "put replaces by id"
    assert await table.delete("b")
    assert not await table.delete("b"), "a missing id is reported, not an error"
    assert await table.list() == [second]


async def test_create_if_absent_and_replace_if_present(store: Storage, kind: TableName) -> None:
    table_of, make = TABLES[kind]
    table = table_of(store)
    assert not await table.replace(make("x", 1)), "replace of a missing id writes nothing"
    assert await table.list() == []
    assert await table.create(make("x", 1, NOW))
    assert not await table.create(make("x", 2, NOW + 5)), "a second create of one id loses"
    assert await table.get("x") == make("x", 1, NOW)
    assert await table.replace(make("x", 3, NOW + 9))
    replaced = make("x", 3, NOW + 9)
    assert await table.get("x") == dataclasses.replace(replaced, created_at=NOW), "replace keeps the stored created_at"


async def test_concurrent_creates_of_one_id_have_exactly_one_winner(store: Storage, kind: TableName) -> None:
    table_of, make = TABLES[kind]
    table = table_of(store)
    told: list[Change[Any]] = []
    table.subscribe(told.append)
    results = await asyncio.gather(*(table.create(make("same", n)) for n in range(20)))
    assert results.count(True) == 1
    assert await table.list() == [make("same", results.index(True))]
    assert [change.record for change in told] == [make("same", results.index(True))], "losers tell nothing"


async def test_every_change_is_told_until_unsubscribed(store: Storage, kind: TableName) -> None:
    table_of, make = TABLES[kind]
    table = table_of(store)
    told: list[Change[Any]] = []
    also: list[Change[Any]] = []
    unsubscribe = table.subscribe(told.append)
    table.subscribe(also.append)
    await table.put(make("p", 1))
    await table.create(make("c", 2))
    await table.replace(make("c", 3))
    await table.delete("p")
    assert not await table.delete("p")
    assert not await table.replace(make("missing", 4))
    expected = [
        Change(kind, "p", make("p", 1)),
        Change(kind, "c", make("c", 2)),
        Change(kind, "c", make("c", 3)),
        Change(kind, "p", None),
    ]
    assert told == expected
    unsubscribe()
    unsubscribe()  # twice is harmless
    await table.put(make("later", 5))
    assert told == expected
    assert also == [*expected, Change(kind, "later", make("later", 5))]


# --- tokens ------------------------------------------------------------------------------------


async def test_a_revocation_is_a_put(store: Storage) -> None:
    issued = TokenRecord("t1", "ab" * 32, ("reader",), ("a", "b"), NOW + 60, NOW, None, "ci")
    other = TokenRecord("t2", "cd" * 32, (), None, None, NOW + 1)
    await store.tokens.put(issued)
    await store.tokens.put(other)
    revoked = dataclasses.replace(issued, revoked_at=NOW + 5)
    await store.tokens.put(revoked)
    assert await store.tokens.list() == [revoked, other]
    assert not revoked.active(NOW + 6)
    assert other.active(NOW + 6)


# --- rules: expiry and the size bound ----------------------------------------------------------


async def test_rules_are_live_until_they_expire(backend: Opened) -> None:
    store = backend.open()
    told: list[Change[IpRule]] = []
    store.rules.subscribe(told.append)
    brief = IpRule("brief", "198.51.100.7", "deny", NOW + 10, "test", NOW)
    lasting = IpRule("lasting", "2001:db8::/64", "allow", None, "", NOW + 1)
    stale = IpRule("stale", "203.0.113.0/24", "deny", NOW - 1, "", NOW - 10)
    for rule in (brief, lasting, stale):
        await store.rules.put(rule)
    assert await store.rules.list() == [brief, lasting], "an expired rule is told, never listed"
    assert told == [Change("rules", r.id, r) for r in (brief, lasting, stale)]
    assert await store.rules.get("stale") is None
    backend.clock.now = NOW + 10
    assert not await store.rules.replace(brief), "an expired rule is a missing one"
    assert await store.rules.list() == [lasting]
    assert await store.rules.get("brief") is None
    assert await store.rules.create(dataclasses.replace(brief, expires_at=NOW + 20)), "an expired id is free again"


async def test_a_full_rule_table_evicts_the_rule_closest_to_expiry(backend: Opened) -> None:
    store = backend.open(max_rules=3)
    told: list[Change[IpRule]] = []
    rules = [
        IpRule("late", "10.0.0.1", "deny", NOW + 300, "", NOW),
        IpRule("soon", "10.0.0.2", "deny", NOW + 100, "", NOW),
        IpRule("never", "10.0.0.3", "deny", None, "", NOW),
    ]
    for rule in rules:
        await store.rules.put(rule)
    store.rules.subscribe(told.append)
    newcomer = IpRule("new", "10.0.0.4", "deny", NOW + 50, "", NOW + 1)
    await store.rules.put(newcomer)
    assert [r.id for r in await store.rules.list()] == ["late", "never", "new"]
    assert told == [Change("rules", "soon", None), Change("rules", "new", newcomer)], "the eviction is told"
    backend.clock.now = NOW + 50
    await store.rules.put(IpRule("after", "10.0.0.5", "deny", None, "", NOW + 2))
    assert [r.id for r in await store.rules.list()] == ["late", "never", "after"], "expired rules make room first"


async def test_a_rule_table_full_of_permanent_rules_refuses_more(backend: Opened) -> None:
    store = backend.open(max_rules=2)
    await store.rules.put(IpRule("a", "10.0.0.1", "deny", None, "", NOW))
    await store.rules.put(IpRule("b", "10.0.0.2", "deny", None, "", NOW))
    told: list[Change[IpRule]] = []
    store.rules.subscribe(told.append)
    with pytest.raises(RuleTableFull):
        await store.rules.put(IpRule("c", "10.0.0.3", "deny", NOW + 5, "", NOW))
    with pytest.raises(RuleTableFull):
        await store.rules.create(IpRule("c", "10.0.0.3", "deny", None, "", NOW))
    assert told == []
    await store.rules.put(IpRule("b", "10.0.0.9", "deny", None, "", NOW))  # replacing by id needs no room
    assert [r.cidr for r in await store.rules.list()] == ["10.0.0.1", "10.0.0.9"]


# --- buckets -----------------------------------------------------------------------------------


def _spec(name: str, capacity: int) -> BucketSpec:
    return BucketSpec(name, capacity=capacity, per_second=capacity / 60, quota=capacity, window=60)


async def test_a_take_is_all_or_nothing(store: Storage) -> None:
    buckets = store.buckets("limiter")
    refs = [BucketRef(_spec("wide", 5), ""), BucketRef(_spec("narrow", 1), "10.0.0.1"), BucketRef(_spec("mcp", 5), "m")]
    taken, levels = await buckets.take(refs, NOW)
    assert taken
    assert levels == [pytest.approx(4), pytest.approx(0), pytest.approx(4)]
    taken, levels = await buckets.take(refs, NOW)
    assert not taken, "the narrow bucket is empty"
    assert levels == [pytest.approx(4), pytest.approx(0), pytest.approx(4)], "so no bucket lost a token"
    assert (await buckets.take([refs[0], refs[2]], NOW))[0], "the others still hold theirs"


async def test_concurrent_takes_never_over_admit(store: Storage) -> None:
    buckets = store.buckets("limiter")
    refs = [BucketRef(_spec("global", 100), ""), BucketRef(_spec("ip", 10), "10.0.0.1")]
    results = await asyncio.gather(*(buckets.take(refs, NOW) for _ in range(50)))
    assert sum(taken for taken, _ in results) == 10


async def test_limiters_keep_their_buckets_apart(store: Storage) -> None:
    ref = [BucketRef(_spec("ip", 1), "10.0.0.1")]
    assert (await store.buckets("one").take(ref, NOW))[0]
    assert (await store.buckets("two").take(ref, NOW))[0], "another namespace, another bucket"
    assert not (await store.buckets("one").take(ref, NOW))[0], "one namespace, the same buckets"


async def test_a_local_bucket_table_holds_at_most_max_keys(store: Storage) -> None:
    buckets = store.buckets("limiter", max_keys=3)
    local = buckets.local
    if local is None:
        pytest.skip("a shared store bounds its buckets by expiry, not by count")
    spec = _spec("ip", 1)
    for n in range(10):
        assert (await buckets.take([BucketRef(spec, f"10.0.0.{n}")], NOW))[0]
    assert len(local.tables["ip"]) == 3
    assert (await buckets.take([BucketRef(spec, "10.0.0.0")], NOW))[0], "a forgotten key starts full"
