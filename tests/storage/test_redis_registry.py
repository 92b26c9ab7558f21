"""Two proxies on one Redis serve one registry: what one registers, replaces or removes, the other follows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import pytest
import yaml
from mcp import types
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from mcp_barbican.storage import McpRecord
from mcp_barbican.storage.redis import Codec, RedisStorage
from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, mcp_client
from tests.storage.redis_server import redis_server
from tests.storage.test_redis_replicas import ADMIN_TOKEN, Replicas, two_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ADMIN: Final = {"authorization": f"Bearer {ADMIN_TOKEN}"}
#: How soon a change made on one replica must be served by the other (DESIGN §4 "Scale").
WITHIN: Final = 1.0
#: How long a replica may take to hear Redis again after an outage (it retries every second) and catch up.
RECOVERY: Final = 10.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    with two_replicas(tmp_path_factory.mktemp("registry"), per_minute=100_000) as started:
        yield started


def redis_url(proxy: RunningProxy) -> str:
    """The Redis URL in the config file `proxy` was started with."""
    args = proxy.process.args
    assert isinstance(args, list)
    config = Path(str(args[-1]))
    url: str = yaml.safe_load(config.read_text())["server"]["storage"]["url"]
    return url


@contextlib.asynccontextmanager
async def store(proxy: RunningProxy) -> AsyncIterator[RedisStorage]:
    """The replicas' store, opened by the test itself: a write here is a write no replica made."""
    opened = RedisStorage(redis_url(proxy))
    try:
        yield opened
    finally:
        await opened.aclose()


async def until(check: Callable[[], Awaitable[bool]], seconds: float) -> float | None:
    """Poll `check` until it holds; the seconds it took, or None if it did not hold within `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    return None


def served(
    client: httpx2.AsyncClient, proxy: RunningProxy, mcp_id: str, wanted: bool = True
) -> Callable[[], Awaitable[bool]]:
    """Whether `proxy` serves (`wanted`) or no longer serves `mcp_id`: a ping without a session is a 400 from a
    served MCP's endpoint, a 404 `unknown_mcp` from the router otherwise."""

    async def check() -> bool:
        headers = {**AUTH_HEADER, "accept": "application/json, text/event-stream"}
        answer = await client.post(
            proxy.url(mcp_id), headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
        )
        assert answer.status_code in (400, 404), answer.text
        return (answer.status_code == 400) == wanted

    return check


async def admin(client: httpx2.AsyncClient, port: int, method: str, path: str, body: Any = None) -> httpx2.Response:
    return await client.request(method, f"http://127.0.0.1:{port}{path}", headers=ADMIN, json=body)


async def echo(proxy: RunningProxy, mcp_id: str, message: str) -> str:
    async with mcp_client(proxy.url(mcp_id)) as client:  # initialize, then tools/call
        result = await client.call_tool("echo", {"message": message})
        return str(result.content[0].text)  # type: ignore[union-attr]


async def test_a_registration_on_one_replica_is_served_by_the_other_within_a_second(replicas: Replicas) -> None:
    (_, admin_a), (b, _) = replicas
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with (
        httpx2.AsyncClient(timeout=30) as client,
        mcp_client(f"{b.base}/mcp", message_handler=on_message) as aggregated,
    ):
        assert not [t for t in (await aggregated.list_tools()).tools if t.name.startswith("joined__")]
        assert not await served(client, b, "joined")()
        start = time.monotonic()
        created = await admin(client, admin_a, "POST", "/admin/mcps", demo_mcp("joined"))
        assert created.status_code == 201, created.text
        took = await until(served(client, b, "joined"), WITHIN)
        assert took is not None, f"replica b does not serve what a registered within {WITHIN} s"
        assert "from b" in await echo(b, "joined", "from b")
        answered = time.monotonic() - start
        assert answered < 10, f"b served it {took:.3f} s after a answered; initialize + tools/call at {answered:.3f} s"
        with anyio.fail_after(10):
            await changed.wait()  # b's aggregated session hears of an MCP another replica registered
        names = {t.name for t in (await aggregated.list_tools()).tools}
        assert "joined__echo" in names, names
        assert "joined" in str(await aggregated.call_tool("joined__echo", {"message": "joined"}))


async def test_a_replacement_on_one_replica_is_applied_by_the_other(replicas: Replicas) -> None:
    (_, admin_a), (b, admin_b) = replicas
    async with httpx2.AsyncClient(timeout=30) as client:
        assert (await admin(client, admin_a, "POST", "/admin/mcps", demo_mcp("swapped"))).status_code == 201
        assert await until(served(client, b, "swapped"), WITHIN) is not None
        async with mcp_client(b.url("swapped")) as session:
            assert "add" in {t.name for t in (await session.list_tools()).tools}

        v2 = demo_mcp("swapped", description="v2", tool_filter={"mode": "block", "list": ["add"]})
        replaced = await admin(client, admin_a, "PUT", "/admin/mcps/swapped", v2)
        assert replaced.status_code == 200, replaced.text

        async def applied() -> bool:
            answer = await admin(client, admin_b, "GET", "/admin/mcps/swapped")
            return bool(answer.json()["definition"]["description"] == "v2")

        assert await until(applied, WITHIN) is not None, f"b does not apply a's replacement within {WITHIN} s"
        entry = (await admin(client, admin_b, "GET", "/admin/mcps/swapped")).json()
        assert entry["status"]["source"] == "api"
        async with mcp_client(b.url("swapped")) as session:
            names = {t.name for t in (await session.list_tools()).tools}
        assert "add" not in names and "echo" in names, names


async def test_a_removal_on_one_replica_stops_the_other_within_a_second(replicas: Replicas) -> None:
    (_, admin_a), (b, _) = replicas
    async with httpx2.AsyncClient(timeout=30) as client:
        assert (await admin(client, admin_a, "POST", "/admin/mcps", demo_mcp("removed"))).status_code == 201
        assert await until(served(client, b, "removed"), WITHIN) is not None
        assert "still" in await echo(b, "removed", "still")
        assert (await admin(client, admin_a, "DELETE", "/admin/mcps/removed")).status_code == 204
        took = await until(served(client, b, "removed", wanted=False), WITHIN)
        assert took is not None, f"b still serves what a removed after {WITHIN} s"
        answer = await client.post(b.url("removed"), headers=AUTH_HEADER, json={"jsonrpc": "2.0", "method": "ping"})
        assert answer.status_code == 404 and answer.json()["error"] == "unknown_mcp"


def lines(proxy: RunningProxy, text: str) -> list[str]:
    return [line for line in proxy.log_text().splitlines() if text in line]


async def test_a_bogus_stored_registration_is_refused_in_one_line_and_the_rest_served(replicas: Replicas) -> None:
    (a, admin_a), (b, _) = replicas
    async with httpx2.AsyncClient(timeout=30) as client, store(b) as shared:
        assert (await admin(client, admin_a, "POST", "/admin/mcps", demo_mcp("kept"))).status_code == 201
        assert await until(served(client, b, "kept"), WITHIN) is not None
        now = time.time()
        await shared.mcps.put(McpRecord("bogus", {"id": "bogus", "command": "x", "surprise": 1}, now, now))
        await shared.mcps.put(McpRecord("demo", demo_mcp("demo", description="not the file's"), now, now))
        await shared.mcps.put(McpRecord("kept", {"id": "kept"}, now, now))  # a bad change to a served one

        async def logged() -> bool:
            return all(lines(b, f"registered MCP {name!r} is") for name in ("bogus", "demo", "kept"))

        assert await until(logged, RECOVERY) is not None, b.log_text()[-3000:]
        await asyncio.sleep(0.5)  # nothing more comes of them
        for proxy in (a, b):
            (bogus,) = lines(proxy, "registered MCP 'bogus' is")
            assert "is not served" in bogus and "surprise" in bogus, bogus
            (config_owned,) = lines(proxy, "registered MCP 'demo' is")
            assert "the config file defines that id" in config_owned, config_owned
            (refused,) = lines(proxy, "registered MCP 'kept' is")
            assert "is served unchanged" in refused and "url" in refused, refused
        assert not await served(client, b, "bogus")()
        assert await served(client, b, "kept")() and await served(client, b, "demo")()
        assert "kept" in await echo(b, "kept", "kept")
        assert "demo" in await echo(b, "demo", "demo")
        for mcp_id in ("bogus", "demo", "kept"):
            await shared.mcps.delete(mcp_id)
        assert await until(served(client, b, "kept", wanted=False), WITHIN) is not None
        assert await served(client, b, "demo")(), "a removed registration under a config id leaves the file's MCP"


async def test_a_change_made_while_a_replica_was_not_listening_is_caught_up(replicas: Replicas) -> None:
    (a, _), (b, _) = replicas
    async with httpx2.AsyncClient(timeout=30) as client, store(b) as shared:
        raw = Redis.from_url(redis_url(b))
        try:
            now = time.time()
            record = McpRecord("missed", demo_mcp("missed"), now, now)
            # Stored as a write stores it, but with no notice: a change no replica heard.
            await raw.hset(shared.mcps.key, "missed", f"{record.created_at!r}\n{Codec.body(record)}")
            assert not await served(client, b, "missed")(), "nobody was told"
            await raw.client_kill_filter(_type="pubsub")  # every replica's listener reconnects and reads again
        finally:
            await raw.aclose()
        took = await until(served(client, b, "missed"), RECOVERY)
        assert took is not None, b.log_text()[-3000:]
        assert "caught up" in await echo(b, "missed", "caught up")
        assert lines(b, "lost the Redis change channel") and lines(b, "Redis reachable again")
        assert await served(client, a, "missed")()
        await shared.mcps.delete("missed")
        assert await until(served(client, b, "missed", wanted=False), WITHIN) is not None


async def test_after_redis_restarts_a_registration_on_one_replica_reaches_the_other(tmp_path: Path) -> None:
    with contextlib.ExitStack() as restarted, two_replicas(tmp_path, per_minute=100_000) as ((a, admin_a), (b, _)):
        url = redis_url(a)
        raw = Redis.from_url(url)
        with contextlib.suppress(RedisConnectionError):
            await raw.shutdown(nosave=True)
        await raw.aclose()

        async def lost() -> bool:
            return bool(lines(b, "lost the Redis change channel"))

        assert await until(lost, RECOVERY) is not None, "b noticed the outage"
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        restarted.enter_context(redis_server(port))  # stopped after the replicas

        async with httpx2.AsyncClient(timeout=30) as client:

            async def registered() -> bool:
                answer = await admin(client, admin_a, "POST", "/admin/mcps", demo_mcp("after"))
                assert answer.status_code in (201, 503), answer.text
                return answer.status_code == 201

            assert await until(registered, RECOVERY) is not None, a.log_text()[-3000:]
            took = await until(served(client, b, "after"), RECOVERY)
            assert took is not None, b.log_text()[-3000:]
            assert "after" in await echo(b, "after", "after")
            assert (await admin(client, admin_a, "DELETE", "/admin/mcps/after")).status_code == 204
            assert await until(served(client, b, "after", wanted=False), WITHIN) is not None


async def test_with_two_workers_a_registration_and_a_removal_reach_both_within_a_second(tmp_path: Path) -> None:
    with two_replicas(tmp_path, per_minute=100_000, kind="workers") as ((_, admin_port), _):
        fresh = httpx2.Limits(max_keepalive_connections=0)  # a new connection per request: either worker takes it
        async with httpx2.AsyncClient(timeout=30, limits=fresh) as client:

            def served_everywhere(count: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    seen: dict[int, int] = {}
                    for _ in range(200):
                        answer = await client.get(f"http://127.0.0.1:{admin_port}/admin/metrics", headers=ADMIN)
                        seen[answer.json()["worker"]] = answer.json()["metrics"]["total_clients"]
                        if len(seen) == 2:
                            break
                    return seen == {1: count, 2: count}

                return check

            assert await until(served_everywhere(1), WITHIN)
            created = await admin(client, admin_port, "POST", "/admin/mcps", demo_mcp("joined"))
            assert created.status_code == 201, created.text
            took = await until(served_everywhere(2), WITHIN)
            assert took is not None, "both workers serve the registration within a second"
            assert (await admin(client, admin_port, "DELETE", "/admin/mcps/joined", None)).status_code == 204
            assert await until(served_everywhere(1), WITHIN) is not None, "and both stop serving it"
