"""What the Redis store adds to the contract: changes heard across processes, buckets exact on the server's clock,
and the rate-limit fail mode while Redis is unreachable. Each test runs a real `redis-server` (so e2e)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from mcp_barbican.config import StorageConfig
from mcp_barbican.exceptions import StorageError
from mcp_barbican.storage import Change, IpRule, McpRecord, open_storage
from mcp_barbican.storage import redis as redis_store
from mcp_barbican.storage.buckets import BucketRef, BucketSpec
from mcp_barbican.storage.notices import follow
from mcp_barbican.storage.redis import RedisStorage
from tests.storage.redis_server import redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def _heard(changes: list[Change[McpRecord]], count: int) -> None:
    while len(changes) < count:  # noqa: ASYNC110 -- polls a list the listener appends to
        await asyncio.sleep(0.01)


async def test_a_change_on_one_store_reaches_the_other_within_a_second(url: str) -> None:
    one, other = RedisStorage(url, key_prefix="two:"), RedisStorage(url, key_prefix="two:")
    try:
        seen: list[Change[McpRecord]] = []
        loaded: list[McpRecord] = []

        def load(records: Iterable[McpRecord]) -> None:
            loaded.extend(records)

        await follow(other.mcps, load, seen.append)
        record = McpRecord("m", {"id": "m", "command": "x"}, NOW, NOW)
        await one.mcps.put(record)
        await asyncio.wait_for(_heard(seen, 1), timeout=1.0)
        assert seen == [Change("mcps", "m", record)]
        assert await one.mcps.delete("m")
        await asyncio.wait_for(_heard(seen, 2), timeout=1.0)
        assert seen[1] == Change("mcps", "m", None)
        mine: list[Change[IpRule]] = []
        other.rules.subscribe(mine.append)
        rule = IpRule("ban:10.0.0.1", "10.0.0.1", "deny", None, "flood", NOW)
        await other.rules.put(rule)
        await asyncio.sleep(0.2)
        assert mine == [Change("rules", rule.id, rule)], "a store's own change is told once, not heard again"
        assert loaded == []
    finally:
        await one.aclose()
        await other.aclose()


async def test_another_prefix_hears_nothing(url: str) -> None:
    one, other = RedisStorage(url, key_prefix="p1:"), RedisStorage(url, key_prefix="p2:")
    try:
        seen: list[Change[McpRecord]] = []
        await follow(other.mcps, lambda _: None, seen.append)
        await one.mcps.put(McpRecord("m", {}, NOW, NOW))
        await asyncio.sleep(0.3)
        assert seen == []
        assert await other.mcps.list() == []
    finally:
        await one.aclose()
        await other.aclose()


async def test_a_follower_catches_up_after_redis_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    with redis_server() as url:
        one, other = RedisStorage(url, key_prefix="back:"), RedisStorage(url, key_prefix="back:")
        followed: dict[str, McpRecord] = {}

        def apply(change: Change[McpRecord]) -> None:
            if change.record is None:
                followed.pop(change.id, None)
            else:
                followed[change.id] = change.record

        await follow(other.mcps, lambda records: followed.update((r.id, r) for r in records), apply)
        await one.mcps.put(McpRecord("before", {}, NOW, NOW))
        await asyncio.wait_for(_until(lambda: "before" in followed), timeout=1.0)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        with caplog.at_level(logging.WARNING), redis_server(port):  # the same address, empty: "before" is gone
            after = McpRecord("after", {}, NOW + 1, NOW + 1)
            await one.mcps.put(after)
            await asyncio.wait_for(_until(lambda: followed == {"after": after}), timeout=5.0)
        assert any("lost the Redis change channel" in r.getMessage() for r in caplog.records)
    finally:
        await one.aclose()
        await other.aclose()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 -- polls state the listener changes
        await asyncio.sleep(0.01)


async def test_a_follower_of_an_unreachable_redis_gets_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "SUBSCRIBE_SECONDS", 0.5)
    with redis_server() as url:
        pass  # a port nothing listens on any more
    store = RedisStorage(url)
    try:
        message = r"^the Redis state store failed: cannot hear its changes: Error 111 connecting"
        with pytest.raises(StorageError, match=message):
            await follow(store.tokens, lambda _: None, lambda _: None)
    finally:
        await store.aclose()


def _spec(capacity: int) -> BucketSpec:
    return BucketSpec("ip", capacity=capacity, per_second=capacity / 60, quota=capacity, window=60)


async def test_many_concurrent_takes_across_stores_admit_exactly_the_limit(url: str) -> None:
    stores = [RedisStorage(url, key_prefix="limit:") for _ in range(2)]
    try:
        refs = [BucketRef(_spec(10), "10.0.0.1")]
        buckets = [store.buckets("limiter") for store in stores]
        results = await asyncio.gather(*(buckets[n % 2].take(refs, 0.0) for n in range(60)))
        assert sum(taken for taken, _ in results) == 10, "the server's clock, not the caller's `now`"
        assert all(levels[0] < 1 for taken, levels in results if not taken), "a refusal takes nothing and says so"
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize(("mode", "admitted"), [("open", True), ("closed", False)])
async def test_rate_limits_follow_fail_mode_while_redis_is_down_and_recover(
    mode: str, admitted: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "RETRY_SECONDS", 0.2)
    with redis_server() as url:
        config = StorageConfig.model_validate({"type": "redis", "url": url, "fail_mode": {"rate_limit": mode}})
        store = open_storage(config)
        buckets = store.buckets("limiter")
        refs = [BucketRef(_spec(1), "10.0.0.1")]
        assert (await buckets.take(refs, NOW))[0]
        assert not (await buckets.take(refs, NOW))[0]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        asked: list[str] = []
        wire = store.wire  # type: ignore[attr-defined]  # the rate limits' own client
        script = wire.script

        async def counted(*args: Any, **kwargs: Any) -> Any:
            asked.append("take")
            return await script(*args, **kwargs)

        monkeypatch.setattr(wire, "script", counted)
        with caplog.at_level(logging.INFO):  # the outage's end is an INFO line
            for _ in range(3):
                assert (await buckets.take(refs, NOW))[0] is admitted
            assert asked == ["take"], "while it fails, Redis is asked again only after RETRY_SECONDS"
            outages = [r.getMessage() for r in caplog.records if "Redis unreachable" in r.getMessage()]
            assert len(outages) == 1, "one line per outage, not per request"
            with redis_server(port):  # back, and empty: the bucket is full again
                await asyncio.sleep(0.3)
                assert (await buckets.take(refs, NOW))[0], "recovered without a restart"
                assert not (await buckets.take(refs, NOW))[0], "and limiting again"
            assert any("Redis reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await store.aclose()


async def test_a_follower_ends_with_the_stored_record_when_replicas_write_one_id_at_once(url: str) -> None:
    one, other = RedisStorage(url, key_prefix="race:"), RedisStorage(url, key_prefix="race:")
    try:
        followed: dict[str, McpRecord] = {}

        def apply(change: Change[McpRecord]) -> None:
            if change.record is not None:
                followed[change.id] = change.record

        await follow(one.mcps, lambda records: None, apply)
        for round_ in range(20):
            writes = [
                (one if n % 2 else other).mcps.put(McpRecord("x", {"n": n}, NOW, NOW + round_)) for n in range(10)
            ]
            await asyncio.gather(*writes)
            stored = await one.mcps.get("x")
            await asyncio.sleep(0.05)
            assert followed["x"] == stored, f"round {round_}: the follower holds what Redis holds"
    finally:
        await one.aclose()
        await other.aclose()


async def test_a_large_limit_leased_to_two_stores_admits_at_most_the_limit_and_close_to_it(url: str) -> None:
    stores = [RedisStorage(url, key_prefix="lease:") for _ in range(2)]
    try:
        refs = [BucketRef(_spec(1_000), "10.0.0.2")]  # leased 10 tokens at a time
        buckets = [store.buckets("limiter") for store in stores]
        started = time.monotonic()
        results = await asyncio.gather(*(buckets[n % 2].take(refs, 0.0) for n in range(1_500)))
        refilled = math.ceil((time.monotonic() - started) * 1_000 / 60)  # the bucket refills meanwhile (Redis TIME)
        admitted = sum(taken for taken, _ in results)
        assert admitted <= 1_000 + refilled, "never more than the limit"
        assert admitted >= 1_000 - 2 * 10, "short by at most the leases the two stores hold"
        assert sum(bucket.take_held(refs) for bucket in buckets) <= 2 * 10
    finally:
        for store in stores:
            await store.aclose()
