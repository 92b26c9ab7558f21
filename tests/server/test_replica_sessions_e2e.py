"""Sessions keep working whichever replica a request lands on (sealed session ids, the owner's tunnel)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.proxy import (
    RunningProxy,
    demo_mcp,
    free_port,
    run_everything_http,
    run_proxy,
    traceback_in,
    write_config,
)
from tests.server.test_endpoint import INIT, sse_messages
from tests.server.test_graceful_stop_e2e import STOP_WITHIN, Reader
from tests.storage.redis_server import redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

OLD_KEY = "old-session-key-0123456789-abcdefghij"
NEW_KEY = "new-session-key-0123456789-abcdefghij"
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
ACCEPT = "application/json, text/event-stream"
ADMIN = "admin-token-0123456789abcdef"


def headers(token: str = ALICE, session: str | None = None) -> dict[str, str]:
    out = {"authorization": f"Bearer {token}", "accept": ACCEPT, "content-type": "application/json"}
    if session is not None:
        out["mcp-session-id"] = session
    return out


def server_block(redis_url: str, keys: list[str]) -> dict[str, Any]:
    return {
        "storage": {"type": "redis", "url": redis_url},
        "session_keys": keys,
        "auth": {"type": "token", "tokens": [{"id": "alice", "token": ALICE}, {"id": "bob", "token": BOB}]},
    }


def mcps(http_url: str) -> list[dict[str, Any]]:
    return [demo_mcp("demo"), {"id": "web", "url": http_url, "transport": "streamable-http"}]


@contextlib.contextmanager
def replica(directory: Path, redis_url: str, http_url: str, keys: list[str]) -> Iterator[RunningProxy]:
    directory.mkdir(exist_ok=True)
    with run_proxy(directory, mcps(http_url), server=server_block(redis_url, keys)) as proxy:
        yield proxy
    assert traceback_in(proxy.log) is None


@pytest.fixture(scope="module")
def backing() -> Iterator[tuple[str, str]]:
    with redis_server() as redis_url, run_everything_http("streamableHttp") as http_url:
        yield redis_url, http_url


@pytest.fixture(scope="module")
def pair(
    backing: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningProxy, RunningProxy]]:
    root = tmp_path_factory.mktemp("replicas")
    with replica(root / "a", *backing, [OLD_KEY]) as a, replica(root / "b", *backing, [OLD_KEY]) as b:
        yield a, b


def open_session(url: str, token: str = ALICE) -> str:
    response = httpx2.post(url, headers=headers(token), json=INIT, timeout=30)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    done = httpx2.post(
        url, headers=headers(token, session), json={"jsonrpc": "2.0", "method": "notifications/initialized"}
    )
    assert done.status_code == 202, done.text
    return session


def call(url: str, session: str, tool: str, token: str = ALICE, **arguments: Any) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return httpx2.post(url, headers=headers(token, session), json=body, timeout=30)


def echoed(response: httpx2.Response) -> str:
    assert response.status_code == 200, response.text
    [message] = sse_messages(response.text)
    assert "result" in message, message
    return str(message["result"]["content"][0]["text"])


def test_an_http_upstream_session_opened_on_one_replica_continues_on_the_other(
    pair: tuple[RunningProxy, RunningProxy],
) -> None:
    a, b = pair
    session = open_session(a.url("web"))
    assert session.startswith("h"), "a Streamable HTTP upstream's session is sealed resumable"
    assert "hello from b" in echoed(call(b.url("web"), session, "echo", message="hello from b"))
    assert "back on a" in echoed(call(a.url("web"), session, "echo", message="back on a"))
    assert "b again" in echoed(call(b.url("web"), session, "echo", message="b again"))


def test_a_stdio_session_works_through_either_replica(pair: tuple[RunningProxy, RunningProxy]) -> None:
    a, b = pair
    session = open_session(a.url("demo"))
    assert session.startswith("o"), "a stdio session is owned by the replica with the child"
    assert echoed(call(b.url("demo"), session, "echo", message="via b")) == "via b"
    assert echoed(call(a.url("demo"), session, "echo", message="via a")) == "via a"
    deleted = httpx2.delete(b.url("demo"), headers=headers(ALICE, session))
    assert deleted.status_code == 204
    assert call(a.url("demo"), session, "echo", message="gone").status_code == 404


def test_the_aggregated_endpoint_session_works_through_either_replica(
    pair: tuple[RunningProxy, RunningProxy],
) -> None:
    a, b = pair
    session = open_session(f"{a.base}/mcp")
    assert echoed(call(f"{b.base}/mcp", session, "demo__echo", message="fan via b")) == "fan via b"


@pytest.mark.parametrize("mcp_id", ["web", "demo"])
def test_a_session_presented_by_another_principal_is_not_found_on_any_replica(
    pair: tuple[RunningProxy, RunningProxy], mcp_id: str
) -> None:
    a, b = pair
    session = open_session(a.url(mcp_id))
    for proxy in (a, b):
        answer = call(proxy.url(mcp_id), session, "echo", token=BOB, message="not mine")
        assert answer.status_code == 404, (proxy.port, answer.text)
        assert answer.json()["error"]["message"] == "Session not found"
    assert "still mine" in echoed(call(b.url(mcp_id), session, "echo", message="still mine"))


@pytest.mark.parametrize("mcp_id", ["web", "demo"])
def test_a_session_id_for_another_mcp_or_altered_is_not_found(
    pair: tuple[RunningProxy, RunningProxy], mcp_id: str
) -> None:
    a, b = pair
    session = open_session(a.url(mcp_id))
    other = "demo" if mcp_id == "web" else "web"
    assert call(b.url(other), session, "echo", message="x").status_code == 404
    altered = session[:-3] + ("AAA" if not session.endswith("AAA") else "BBB")
    assert call(b.url(mcp_id), altered, "echo", message="x").status_code == 404
    moved = ("h" if session.startswith("o") else "o") + session[1:]
    assert call(b.url(mcp_id), moved, "echo", message="x").status_code == 404


async def test_a_legacy_sse_session_takes_its_messages_through_the_other_replica(
    pair: tuple[RunningProxy, RunningProxy],
) -> None:
    a, b = pair
    auth = {"authorization": f"Bearer {ALICE}"}
    async with httpx2.AsyncClient(timeout=30) as client:
        async with client.stream("GET", a.url("demo", "/sse"), headers={**auth, "accept": "text/event-stream"}) as sse:
            lines = sse.aiter_lines()
            endpoint = ""
            async for line in lines:
                if line.startswith("data:"):
                    endpoint = line[5:].strip()
                    break
            assert "session_id=o" in endpoint
            posted = await client.post(
                f"{b.base}{endpoint}", headers={**auth, "content-type": "application/json"}, json=INIT
            )
            assert posted.status_code == 202, posted.text
            async for line in lines:
                if line.startswith("data:") and '"result"' in line:
                    assert "mcp-barbican-demo" in line
                    break


async def test_the_official_client_hopping_replicas_on_every_request(
    pair: tuple[RunningProxy, RunningProxy],
) -> None:
    a, b = pair
    ports = itertools.cycle([a.port, b.port])
    seen: list[int] = []

    async def hop(request: httpx2.Request) -> None:
        port = next(ports)
        seen.append(port)
        request.url = request.url.copy_with(port=port)

    for mcp_id in ("web", "demo"):
        http = httpx2.AsyncClient(
            headers={"authorization": f"Bearer {ALICE}"},
            timeout=httpx2.Timeout(30, read=60),
            event_hooks={"request": [hop]},
        )
        async with http, Client(streamable_http_client(a.url(mcp_id), http_client=http)) as client:
            tools = await client.list_tools()
            assert any(tool.name == "echo" for tool in tools.tools)
            for n in range(4):
                result = await client.call_tool("echo", {"message": f"hop {n}"})
                assert f"hop {n}" in result.content[0].text  # type: ignore[union-attr]
    assert {a.port, b.port} <= set(seen)


def test_an_owned_session_whose_replica_is_gone_is_not_found(backing: tuple[str, str], tmp_path: Path) -> None:
    with replica(tmp_path / "b", *backing, [OLD_KEY]) as b:
        with replica(tmp_path / "a", *backing, [OLD_KEY]) as a:
            session = open_session(a.url("demo"))
            assert echoed(call(b.url("demo"), session, "echo", message="x")) == "x"
        started = time.monotonic()
        gone = call(b.url("demo"), session, "echo", message="x")
        assert gone.status_code == 404 and gone.json()["error"]["message"] == "Session not found"
        assert time.monotonic() - started < 5


def test_key_rotation_keeps_live_sessions(backing: tuple[str, str], tmp_path: Path) -> None:
    redis_url, http_url = backing
    with replica(tmp_path / "a", *backing, [OLD_KEY]) as a:
        before = open_session(a.url("web"))
        # Step 1 of a rotation: the new key is added second everywhere (here: a replica started with it).
        with replica(tmp_path / "b", *backing, [NEW_KEY, OLD_KEY]) as b:
            assert "old on b" in echoed(call(b.url("web"), before, "echo", message="old on b"))
            sealed_new = open_session(b.url("web"))
            assert call(a.url("web"), sealed_new, "echo", message="x").status_code == 404  # a lacks the new key
            # Step 2: a takes the new key by a reload; nothing it serves is dropped.
            rotated = {**_live_server(a), **server_block(redis_url, [NEW_KEY, OLD_KEY])}
            write_config(tmp_path / "a", {"server": rotated, "mcps": mcps(http_url)})
            os.kill(a.process.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while call(a.url("web"), sealed_new, "echo", message="x").status_code != 200:
                assert time.monotonic() < deadline, a.log_text()[-2000:]
                time.sleep(0.2)
            assert "old on a" in echoed(call(a.url("web"), before, "echo", message="old on a"))


def _live_server(proxy: RunningProxy) -> dict[str, Any]:
    """What run_proxy wrote for this replica's listener, to rewrite its config for a reload."""
    return {"host": "127.0.0.1", "port": proxy.port, "security": {"auth_failure_ban": {"enabled": False}}}


def test_a_resumable_session_survives_a_restart_of_its_replica(backing: tuple[str, str], tmp_path: Path) -> None:
    with replica(tmp_path / "a", *backing, [OLD_KEY]) as a:
        session = open_session(a.url("web"))
        assert "first" in echoed(call(a.url("web"), session, "echo", message="first"))
    with replica(tmp_path / "a2", *backing, [OLD_KEY]) as again:
        assert "after restart" in echoed(call(again.url("web"), session, "echo", message="after restart"))


async def test_a_stream_through_the_other_replica_ends_at_the_owner_when_its_client_leaves(
    pair: tuple[RunningProxy, RunningProxy],
) -> None:
    a, b = pair
    session = open_session(a.url("demo"))
    get_headers = {"authorization": f"Bearer {ALICE}", "accept": "text/event-stream", "mcp-session-id": session}
    async with httpx2.AsyncClient(timeout=30) as client:
        async with client.stream("GET", b.url("demo"), headers=get_headers) as stream:
            assert stream.status_code == 200
        # The owner learns the client left and lets the session open its GET stream again (no 409).
        deadline = time.monotonic() + 5
        while True:
            async with client.stream("GET", a.url("demo"), headers=get_headers) as again:
                if again.status_code == 200:
                    break
                assert again.status_code == 409 and time.monotonic() < deadline
            await anyio.sleep(0.1)


def test_a_body_too_large_for_the_owner_is_refused_by_the_forwarder(pair: tuple[RunningProxy, RunningProxy]) -> None:
    a, b = pair
    session = open_session(a.url("demo"))
    huge = "x" * (5 * 1024 * 1024)
    answer = call(b.url("demo"), session, "echo", message=huge)
    assert answer.status_code == 413, answer.text[:200]


def test_redis_stopped_a_forwarded_request_gets_503_and_works_again_when_redis_returns(tmp_path: Path) -> None:
    port = free_port()
    with run_everything_http("streamableHttp") as http_url, contextlib.ExitStack() as stack:
        redis = contextlib.ExitStack()
        redis_url = redis.enter_context(redis_server(port))
        a = stack.enter_context(replica(tmp_path / "a", redis_url, http_url, [OLD_KEY]))
        b = stack.enter_context(replica(tmp_path / "b", redis_url, http_url, [OLD_KEY]))
        owned = open_session(a.url("demo"))
        resumable = open_session(a.url("web"))
        assert echoed(call(b.url("demo"), owned, "echo", message="x")) == "x"
        redis.close()
        # Redis is down: the owner cannot be asked (503, try again); a resumable session needs no Redis.
        answer = call(b.url("demo"), owned, "echo", message="y")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
        assert "no redis" in echoed(call(b.url("web"), resumable, "echo", message="no redis"))
        with redis_server(port):
            deadline = time.monotonic() + 15
            while (answer := call(b.url("demo"), owned, "echo", message="z")).status_code != 200:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.3)
            assert echoed(answer) == "z"


def test_sessions_work_whichever_worker_takes_each_request(backing: tuple[str, str], tmp_path: Path) -> None:
    redis_url, http_url = backing
    server = {**server_block(redis_url, []), "admin": {"token": ADMIN}}
    del server["session_keys"]  # the supervisor makes the key its workers seal with
    with run_proxy(tmp_path, mcps(http_url), server=server, workers=2) as proxy:
        sessions = {mcp_id: open_session(proxy.url(mcp_id)) for mcp_id in ("demo", "web")}
        for n in range(20):  # httpx2.post: a new connection each, which either worker may accept
            for mcp_id, session in sessions.items():
                assert f"call {n}" in echoed(call(proxy.url(mcp_id), session, "echo", message=f"call {n}"))
            time.sleep(0.01)
        served = _metrics_per_worker(proxy)
    assert traceback_in(proxy.log) is None
    assert set(served) == {1, 2}, served
    # The web MCP's sessions are continued by the worker that takes the request: both relayed some.
    assert all(metrics["metrics"]["total_requests"] for metrics in served.values()), served
    # The stdio session's requests that the other worker took reached the owner through the tunnel, each once.
    forwards = [metrics["session_forwards"] for metrics in served.values()]
    assert sum(f["forwarded"] for f in forwards) == sum(f["served"] for f in forwards) > 0, forwards


def _metrics_per_worker(proxy: RunningProxy) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        answer = httpx2.get(f"{proxy.base}/admin/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 200, answer.text
        found[answer.json()["worker"]] = answer.json()
        if len(found) == 2:
            break
    return found


def test_a_forwarded_get_stream_ends_cleanly_when_the_forwarder_stops(backing: tuple[str, str], tmp_path: Path) -> None:
    with replica(tmp_path / "a", *backing, [OLD_KEY]) as a:
        session = open_session(a.url("demo"))
        with replica(tmp_path / "b", *backing, [OLD_KEY]) as b:
            stream_headers = {**headers(ALICE, session), "accept": "text/event-stream"}
            reader = Reader(b.url("demo"), {**stream_headers, "mcp-protocol-version": "2025-11-25"})
            reader.start()
            reader.wait_for(b"id:")  # the owner's priming event, through the tunnel
            started = time.monotonic()
            b.process.send_signal(signal.SIGTERM)
            b.process.wait(30)
            took = time.monotonic() - started
            reader.join(10)
            assert took < STOP_WITHIN, f"the forwarder's stop took {took:.1f} s"
            assert reader.ended == "complete"
        # The owner heard the end: the session's GET stream is free again (409 while it is held).
        deadline = time.monotonic() + 10
        while True:
            with httpx2.stream("GET", a.url("demo"), headers=stream_headers, timeout=30) as again:
                if again.status_code == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        assert again.status_code == 200
