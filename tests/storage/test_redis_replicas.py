"""Two proxies on one Redis behave as one: a limit shared exactly, a ban set on one enforced by the other.

Each test runs twice: against two replicas (two `serve` processes), and against one `serve --workers 2`
(both "replicas" are the same address; new connections per request and the workers' own counters show
that both workers answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.proxy import TOKEN, RunningProxy, demo_mcp, free_port, run_proxy, traceback_in
from tests.storage.redis_server import redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ADMIN_TOKEN = TOKEN + "-admin"


Replicas = tuple[tuple[RunningProxy, int], tuple[RunningProxy, int]]
#: Two replicas, or one `serve --workers 2` standing for both.
KINDS = ("replicas", "workers")


@pytest.fixture(params=KINDS)
def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Replicas]:
    with two_replicas(tmp_path, per_minute=10, kind=request.param) as started:
        yield started


@contextlib.contextmanager
def two_replicas(tmp_path: Path, *, per_minute: int, kind: str = "replicas") -> Iterator[Replicas]:
    """Two proxies (with their admin ports) on one fresh Redis, or one with two workers; a limit of `per_minute`."""
    with redis_server() as url, contextlib.ExitStack() as stack:
        started = []
        for name in ("a", "b") if kind == "replicas" else ("workers",):
            directory = tmp_path / name
            directory.mkdir()
            admin_port = free_port()
            server: dict[str, Any] = {
                "storage": {"type": "redis", "url": url},
                "admin": {"port": admin_port, "token": ADMIN_TOKEN},
                "trusted_proxies": ["127.0.0.1/32"],
                "security": {"auth_failure_ban": {"enabled": False}, "rate_limit": {"requests_per_minute": per_minute}},
            }
            workers = 1 if kind == "replicas" else 2
            proxy = stack.enter_context(run_proxy(directory, [demo_mcp("demo")], server=server, workers=workers))
            started.append((proxy, admin_port))
        yield started[0], started[-1]
        if kind == "workers":
            workers_counters(started[0][1])  # both workers answered on the shared listener


def client() -> httpx2.AsyncClient:
    """A new connection per request, so that the kernel hands requests to either worker."""
    return httpx2.AsyncClient(timeout=10, limits=httpx2.Limits(max_keepalive_connections=0))


def workers_counters(admin_port: int) -> dict[int, dict[str, Any]]:
    """Each worker's security counters, by worker number (asked on new connections until both answered)."""
    found: dict[int, dict[str, Any]] = {}
    with httpx2.Client(timeout=10, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
        for _ in range(200):
            answer = http.get(
                f"http://127.0.0.1:{admin_port}/admin/security/metrics",
                headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert answer.status_code == 200, answer.text
            found[answer.json()["worker"]] = answer.json()
            if len(found) == 2:
                break
    assert set(found) == {1, 2}, f"only worker(s) {sorted(found)} answered 200 new connections"
    return found


def _call(http: httpx2.AsyncClient, proxy: RunningProxy, ip: str, token: str = TOKEN) -> Any:
    headers = {
        "authorization": f"Bearer {token}",
        "x-forwarded-for": ip,
        "accept": "application/json, text/event-stream",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    return http.post(proxy.url("demo"), headers=headers, json=body)


async def test_a_limit_of_ten_admits_exactly_ten_across_both_replicas(
    replicas: Replicas,
) -> None:
    proxies = [replicas[0][0], replicas[1][0]]

    async def call(n: int) -> Any:
        # Started 5 ms apart, still overlapping: a burst of connections arriving at once would all be
        # accepted by whichever worker wakes first (a shared accept queue is not balanced).
        await asyncio.sleep(n * 0.005)
        return await _call(http, proxies[n % 2], "10.1.1.1")

    async with client() as http:
        answers = await asyncio.gather(*(call(n) for n in range(30)))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(429) == 20, statuses
    assert {status for status in statuses if status != 429} <= {200, 400}, statuses
    if proxies[0] is proxies[1]:  # two workers: each refused its share, and the shares add up
        refused = {n: c["rate_limit_exceeded"] for n, c in workers_counters(replicas[0][1]).items()}
        assert sum(refused.values()) == 20, refused
        assert all(refused.values()), f"both workers served the test's requests: {refused}"


async def test_a_ban_set_on_one_replica_is_enforced_by_the_other_within_a_second(
    replicas: Replicas,
) -> None:
    (_, admin_a), (b, _) = replicas
    async with client() as http:
        assert (await _call(http, b, "10.9.9.9")).status_code != 403
        answer = await http.post(
            f"http://127.0.0.1:{admin_a}/admin/security/ip-rules",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"cidr": "10.9.9.9", "action": "deny"},
        )
        assert answer.status_code in (200, 201), answer.text
        deadline = time.monotonic() + 1.0
        status = 0
        while time.monotonic() < deadline:
            status = (await _call(http, b, "10.9.9.9")).status_code
            if status == 403:
                break
            await asyncio.sleep(0.05)
        assert status == 403, "replica b enforces the rule replica a's admin API wrote"
        later = [(await _call(http, b, "10.9.9.9")).status_code for _ in range(6)]
        assert later == [403] * 6, "every later request is refused, whichever worker takes it"
        assert (await _call(http, b, "10.9.9.8")).status_code != 403, "another address is still served"


async def test_redis_stopped_mid_run_fails_as_configured_and_recovers(tmp_path: Path) -> None:
    admin_port = free_port()
    issue = f"http://127.0.0.1:{admin_port}/admin/tokens"
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with contextlib.ExitStack() as stack:
        with redis_server() as url:
            server: dict[str, Any] = {
                "storage": {"type": "redis", "url": url},
                "admin": {"port": admin_port, "token": ADMIN_TOKEN},
                "trusted_proxies": ["127.0.0.1/32"],
                "security": {"rate_limit": {"requests_per_minute": 100}},
            }
            running = stack.enter_context(run_proxy(tmp_path, [demo_mcp("demo")], server=server))
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with httpx2.AsyncClient(timeout=10) as client:
            down = await client.post(issue, headers=admin, json={})
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "storage_unavailable"
            assert "Redis" in down.json()["message"]
            served = [(await _call(client, running, "10.2.2.2")).status_code for _ in range(3)]
            assert 429 not in served and 500 not in served, "rate limits fail open by default"
            with redis_server(port):
                up = await client.post(issue, headers=admin, json={})
                assert up.status_code == 201, "recovered without a restart"
        assert traceback_in(running.log) is None
        assert "rate limits: Redis unreachable" in running.log_text()


async def _accepted_within_a_second(http: httpx2.AsyncClient, proxy: RunningProxy, token: str, wanted: bool) -> bool:
    """Whether `proxy` comes to accept (`wanted`) or refuse `token` within one second (a ping without a session
    is a 400 once authenticated; 401 is the refusal)."""
    deadline = time.monotonic() + 1.0
    accepted = not wanted
    while time.monotonic() < deadline:
        accepted = (await _call(http, proxy, "10.3.3.3", token)).status_code != 401
        if accepted == wanted:
            break
        await asyncio.sleep(0.05)
    return accepted


@pytest.mark.parametrize("kind", KINDS)
async def test_a_token_issued_on_one_replica_works_on_the_other_until_revoked_on_either(
    tmp_path: Path, kind: str
) -> None:
    with two_replicas(tmp_path, per_minute=1000, kind=kind) as ((a, admin_a), (b, admin_b)):
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        async with client() as http:
            issued = await http.post(f"http://127.0.0.1:{admin_a}/admin/tokens", headers=admin, json={"id": "shared"})
            assert issued.status_code == 201, issued.text
            token = issued.json()["token"]
            assert (await _call(http, b, "10.3.3.3", "not-" + token)).status_code == 401
            assert await _accepted_within_a_second(http, b, token, True), "b accepts a's token"
            revoked = await http.delete(f"http://127.0.0.1:{admin_b}/admin/tokens/shared", headers=admin)
            assert revoked.status_code == 204, revoked.text
            assert not await _accepted_within_a_second(http, a, token, False), "a refuses what b revoked"
